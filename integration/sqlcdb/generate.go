// Package sqlcdb is the code that sqlc generates from schema.sql and
// query.sql; the tests run it through jsonstream. Generating needs cgo.
package sqlcdb

//go:generate go run github.com/sqlc-dev/sqlc/cmd/sqlc@v1.31.1 generate
