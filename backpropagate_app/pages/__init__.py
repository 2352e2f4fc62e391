"""The app's pages, in navigation order; each module has one State and one page function."""

from backpropagate_app.pages import dataset, export, multirun, run_detail, runs, train

PAGES = [dataset.PAGE, train.PAGE, multirun.PAGE, export.PAGE, runs.PAGE,
         run_detail.PAGE]
