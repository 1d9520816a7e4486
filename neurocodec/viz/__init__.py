"""Pictures of samples: `neurocodec.show_sample` draws one window as a matplotlib Figure (the
command `neurocodec show` writes it to a file). matplotlib is an optional extra
(`pip install 'neurocodec[plot]'`), imported only when a picture is drawn.

- `neurocodec.viz.sample`: choosing and reading the sample, and what the manifest says of it.
- `neurocodec.viz.panels`: one drawing function per kind of panel.
- `neurocodec.viz.figure`: the layout, the title, the shared time axis, writing the file.
- `neurocodec.viz.mpl`: importing matplotlib; `neurocodec.viz.errors`: the errors.
"""
