"""The development server, ``manage.py runserver``: daphne, imported only when that command runs.

Listed in ``INSTALLED_APPS`` before ``django.contrib.staticfiles``, so that its ``runserver`` replaces
Django's. Unlike daphne's own app, it imports nothing at start-up: the production server and every
other command load no daphne, Twisted or autobahn, and need none of them installed.
"""
