"""The backpropagate web app (Reflex). It never imports torch: every heavy step runs in an
engine subprocess, and the pages read the run store."""
