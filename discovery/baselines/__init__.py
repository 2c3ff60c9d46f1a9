"""Baseline learners: BP, FA, DFA, sign feedback, BP + Oja (``learners``) and predictive coding (``pc``)."""
