-- name: CountDocuments :one
SELECT count(*) FROM documents WHERE kind = $1;

-- name: ListDocuments :many
SELECT id, kind, data FROM documents WHERE kind = $1 ORDER BY id;

-- name: ListDocumentData :many
SELECT data FROM documents WHERE kind = $1 ORDER BY id;
