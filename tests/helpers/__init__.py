"""Test helpers shared by several test files (not collected as tests): goal jobs run over REST
(``goal_jobs``), uploaded-file resources and their migrations (``uploads``)."""
