// Package integration runs jsonstream under the libraries that build
// their queries themselves (sqlc's generated code, sqlx, GORM, otelsql,
// pgx's database/sql driver) against a real PostgreSQL server. It is a
// module of its own, so that the library's go.mod names none of them.
package integration
