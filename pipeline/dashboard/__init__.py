"""`rassylka dashboard`: a web page for analysts and ops over the analytics store.

One HTML page and one JSON endpoint per chart (`app.py`), the SQL behind each chart
(`queries.py`), the confidence interval of a rate (`stats.py`), the page itself
(`page.py`). Plotly's JavaScript is served from the installed `plotly` package: the page
loads nothing from outside the dashboard, so it works offline.
"""
