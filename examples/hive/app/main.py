"""A small API in the Hive style, the app half of the all-in-one genie/agent images.

It reads its database from DATABASE_URL (tandem sets it for the embedded PostgreSQL). The
health check keeps one connection and runs SELECT 1 on it every time (reconnecting when the
database went away), as a pooled app would; the notes endpoints open one per request.

    GET  /api/v1/health   200 {"status": "ok", "database": NAME} while SELECT 1 answers, else 503
    POST /api/v1/notes    {"text": "..."} -> 201 {"id": ..., "text": ...}
    GET  /api/v1/notes    every note, oldest first
"""

import os
import threading

import psycopg
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel

DATABASE_URL = os.environ["DATABASE_URL"]
# A health probe must answer within its own timeout even when the database does not.
CONNECT_TIMEOUT_S = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS notes (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    text       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""

app = FastAPI(title="hive example")
_schema_lock = threading.Lock()
_schema_ready = False
_health_lock = threading.Lock()
_health_conn = None


class NoteIn(BaseModel):
    text: str


def connect() -> psycopg.Connection:
    return psycopg.connect(DATABASE_URL, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True)


def connect_notes() -> psycopg.Connection:
    """A connection with the notes table in place (created on first use, once per process)."""
    global _schema_ready
    conn = connect()
    try:
        with _schema_lock:
            if not _schema_ready:
                conn.execute(SCHEMA)
                _schema_ready = True
    except BaseException:
        conn.close()
        raise
    return conn


def ping() -> str:
    """SELECT 1 on the kept connection, with one fresh try if it broke; the database name."""
    global _health_conn
    with _health_lock:
        for attempt in (1, 2):
            if _health_conn is None or _health_conn.closed:
                _health_conn = connect()
            try:
                _health_conn.execute("SELECT 1")
                return _health_conn.info.dbname
            except psycopg.OperationalError:
                _health_conn.close()
                _health_conn = None
                if attempt == 2:
                    raise
    raise RuntimeError("unreachable")


@app.get("/api/v1/health")
def health():
    try:
        database = ping()
    except psycopg.Error as err:
        return JSONResponse({"status": "unavailable", "error": str(err).strip()}, status_code=503)
    return {"status": "ok", "database": database}


@app.post("/api/v1/notes", status_code=201)
def add_note(note: NoteIn):
    with connect_notes() as conn:
        note_id, text = conn.execute(
            "INSERT INTO notes (text) VALUES (%s) RETURNING id, text", (note.text,)
        ).fetchone()
    return {"id": note_id, "text": text}


@app.get("/api/v1/notes")
def list_notes():
    with connect_notes() as conn:
        rows = conn.execute("SELECT id, text FROM notes ORDER BY id").fetchall()
    return [{"id": note_id, "text": text} for note_id, text in rows]
