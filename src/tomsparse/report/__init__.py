"""Reports: the plot style (``style``), the HTML page shell (``html``) and the sweep report
(``sweep_report``)."""
