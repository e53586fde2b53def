"""The measurement code behind ``benchmarks/``: the scripts there parse options and print, these modules
measure (and are what the tests import).

A top layer beside ``reproduce/``: :mod:`.train_throughput` builds experiments the way ``calid fit`` does.
"""
