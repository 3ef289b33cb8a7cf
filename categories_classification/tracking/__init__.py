"""The MLflow side, one concern per module (lowest first): ``uri`` where the store is, ``store`` how
it is reached, ``locks`` the promotion lock, ``runs`` every run opened and closed, ``registry``
versions and the champion, ``flavor`` how a model is stored, ``artifacts`` fetching and checking it."""
