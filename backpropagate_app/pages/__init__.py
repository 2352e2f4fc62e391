"""The app's pages, in navigation order: one module, or one folder (page, state, view, ...) per page."""

from backpropagate_app.pages import dataset
from backpropagate_app.pages.export import page as export
from backpropagate_app.pages.multirun import page as multirun
from backpropagate_app.pages.runs import compare
from backpropagate_app.pages.runs import detail as run_detail
from backpropagate_app.pages.runs import page as runs
from backpropagate_app.pages.train import page as train

# The comparison's static route comes before the run page's dynamic one.
PAGES = [dataset.PAGE, train.PAGE, multirun.PAGE, export.PAGE, runs.PAGE, compare.PAGE,
         run_detail.PAGE]
