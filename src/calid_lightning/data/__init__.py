"""Data: the phantom, the data-set readers, sparse-to-dense sampling and the DataModules."""
