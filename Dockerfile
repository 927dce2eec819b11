# The production image: web (python -m wsproject.server: uvicorn) and pusher (push_data) both run from
# it. requirements.txt holds no daphne, Twisted or autobahn: those serve only `manage.py runserver`.

# The page's npm packages, exactly as package-lock.json pins them. Only the chart library's built
# files leave this stage: no Node.js in the final image.
FROM node:22-slim AS frontend
WORKDIR /build
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN useradd --create-home --uid 10001 app

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY manage.py ./
COPY wsproject ./wsproject
COPY echo ./echo
COPY templates ./templates
COPY deploy/compose_secrets.py ./deploy/
COPY --from=frontend /build/node_modules/uplot/dist ./node_modules/uplot/dist
# Static files are collected at build time. Migrations are not applied here (a build has no database
# to apply them to): compose's one-shot `migrate` service applies them before any web replica starts.
# The image expects DATABASE_URL (compose sets it): without it Django would use an SQLite file in /app,
# which the app user cannot write.
RUN DJANGO_SECRET_KEY=collectstatic-only DJANGO_ALLOWED_HOSTS=build \
    python manage.py collectstatic --noinput -v 0

# Where compose mounts its secrets volume (deploy/compose_secrets.py). A new named volume takes this
# directory's owner and mode, so the app user writes the secrets there and only it (and root) reads them.
RUN mkdir -m 700 /secrets && chown app:app /secrets

USER app
EXPOSE 8000
# Exports the secrets found in /secrets unless the environment sets them, then runs the command;
# with nothing in /secrets (the image run outside compose) it changes nothing.
ENTRYPOINT ["python", "deploy/compose_secrets.py", "exec", "/secrets", "--"]
CMD ["python", "-m", "wsproject.server", "--host", "0.0.0.0", "--port", "8000"]
