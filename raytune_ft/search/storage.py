"""Where an experiment lives: the storage folder or URI (`Location`, `locate`), and `UserError`, the
one-line error every stage of a search raises for bad input."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STORAGE = "ray_results"  # relative to the current directory

STORAGE_ENV = "RAYTUNE_FT_STORAGE"  # the default --storage-path where set, e.g. s3://bucket/prefix on a cluster




class UserError(Exception):
    """Bad input from the command line or a file: reported in one line, without a traceback."""




@dataclass(frozen=True)
class Location:
    """Where an experiment lives: `uri` as recorded (a local folder or e.g. s3://bucket/prefix/name)
    and `local`, the folder this driver writes the search's own files to (the experiment folder
    itself, or a staging folder uploaded to `uri`)."""

    uri: str
    local: Path

    @property
    def remote(self) -> bool:
        return "://" in self.uri

    @property
    def storage_path(self) -> str:  # Tune's RunConfig(storage_path=...), with name = local.name
        return self.uri.rsplit("/", 1)[0] if self.remote else str(self.local.parent)

    def exists(self) -> bool:
        if not self.remote:
            return self.local.exists()
        from pyarrow import fs

        filesystem, path = fs.FileSystem.from_uri(self.uri)
        return filesystem.get_file_info(path).type != fs.FileType.NotFound

    def has(self, name: str) -> bool:
        if not self.remote:
            return (self.local / name).exists()
        from pyarrow import fs

        filesystem, path = fs.FileSystem.from_uri(self.uri)
        return filesystem.get_file_info(f"{path}/{name}").type != fs.FileType.NotFound

    def upload(self, *names: str) -> None:
        """Copy files or folders of `local` to `uri` (nothing to do for a local experiment)."""
        if not self.remote:
            return
        from pyarrow import fs

        filesystem, path = fs.FileSystem.from_uri(self.uri)
        for name in names:
            source = self.local / name
            if not source.exists():
                continue
            target = f"{path}/{name}"
            filesystem.create_dir(target.rsplit("/", 1)[0] if source.is_file() else target, recursive=True)
            fs.copy_files(str(source), target, source_filesystem=fs.LocalFileSystem(),
                          destination_filesystem=filesystem)


def locate(storage_path: str, name: str) -> Location:
    """The experiment <storage-path>/<name>; a URI gets a fresh local staging folder."""
    if "://" not in storage_path:
        folder = Path(storage_path).expanduser().resolve() / name
        return Location(str(folder), folder)
    try:
        from pyarrow import fs

        fs.FileSystem.from_uri(storage_path)
    except Exception as err:  # unknown scheme, bad bucket name, missing filesystem support
        raise UserError(f"--storage-path {storage_path!r} is not a folder or a URI pyarrow.fs can open: "
                        f"{err}") from err
    staging = Path(tempfile.mkdtemp(prefix="raytune_ft-")) / name
    staging.mkdir()
    return Location(f"{storage_path.rstrip('/')}/{name}", staging)
