"""Detection: what each embedding cell is expected to look like, and when it stopped.

Pure NumPy cores, vectorised over cells and tested without Dask: ``stats`` (scoring and updating
one acquisition), ``state`` (the per-tile state: the embedding's rolling mean and spread, the
cell's own distance distribution), ``state_file`` (its checkpoints), ``kernels`` (the compiled one-pass core),
``seasonal`` (the per-cell seasonal index model), ``change`` (sudden against gradual change:
the step, the cell's envelope by month of year, the gradual CUSUM), ``labels`` (water_gain,
burn, vegetation_loss, bare_gain from index deltas), ``alerts`` (provisional, confirmed,
recovered, retracted), ``history`` (the
earlier checkpoints kept so a look published late can be folded in where it belongs).

May import: the foundation (``streamembed.config``, ``grid``, ``indices``, ``storage``, …).
Never the sources, outputs, runtime or anything that uses them: the actor (runtime) and the
sink (outputs) call into detection, not the reverse.
"""
