"""Reports: the plot style (``style``), the HTML page shell (``html``), the plots of a sweep with
their intervals (``plots``), the sweep report (``sweep_report``) and several runs side by side
(``compare``)."""
