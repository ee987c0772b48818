"""Latency you can trust on a named device: block library, lookup tables, predictor, accuracy report.

* ``standalone.py``: block keys and builders, the one measurement routine, platform plug-ins, table building; one file
  that needs only torch (copy it to a device to build a table there).
* ``lut.py``: the versioned JSON table (format documented there): load, check, on-demand measurement, save.
* ``network.py``: networks as blocks (NetSpec), runnable ChainNets, random networks.
* ``zoo.py``: registered models as library blocks plus fixed parts (head, MiT stages) plus the final resize.
* ``spaces.py``: search spaces as candidate blocks per layer.
* ``predictor.py``: sums, corrections fitted on random networks, differentiable expected latency.
* ``report.py``: predicted versus measured latency on random networks and the zoo, with measurement noise.
* ``cli.py``: ``segdistill lut build|blocks|show`` and ``segdistill latency predict|fit|report``.

Nothing is imported here, so that ``standalone`` stays importable on a device with torch alone.
"""
