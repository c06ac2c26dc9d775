CREATE TABLE documents (
    id   bigint PRIMARY KEY,
    kind text   NOT NULL,
    data jsonb  NOT NULL
);
