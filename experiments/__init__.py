"""The experiment scripts, one per table or figure of the README; run each as a module.

  python -m experiments.vnq --tiny          # any script: python -m experiments.NAME --help

Scripts import the library and the shared helpers of this package (`experiments.timing`,
`experiments.runs`), never another script.
"""
