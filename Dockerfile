FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY l2site l2site
COPY inversions inversions
COPY scanning scanning
COPY publishing publishing
RUN pip install --no-cache-dir .
COPY . .
RUN SECRET_KEY=build DATABASE_URL=postgres://build@localhost/build CELERY_BROKER_URL=redis://localhost \
    python manage.py collectstatic --no-input -v 0
RUN useradd --create-home l2 && mkdir -p /data && chown l2 /data
USER l2
EXPOSE 8000
CMD ["gunicorn", "l2site.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3"]
