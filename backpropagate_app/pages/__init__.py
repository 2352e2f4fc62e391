"""The app's pages, in navigation order; each module has one State and one page function."""

from backpropagate_app.pages import dataset, export, run_detail, runs, stages, train

PAGES = [dataset.PAGE, train.PAGE, stages.MULTIRUN, export.PAGE, runs.PAGE,
         run_detail.PAGE]
