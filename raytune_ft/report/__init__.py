"""Reading and presenting results, one concern per module: an experiment folder read as tables and
its front (`results`), the analyses computed from them (`analysis`), the figures drawn from those
(`figures`), the HTML report assembled from both (`page`), the numbers in table cells and the
plain-text table (`tables`) and the closing summary printed when a search ends (`summary`).
matplotlib is imported inside the drawing functions, torch only where a report reads test files.
"""
