// Package bench compares jsonstream with the drivers it competes with:
// lib/pq, which it wraps, and pgx, through database/sql and natively. The
// benchmarks are in this package's tests; cmd/report runs them repeatedly
// and writes RESULTS.md.
//
// Every client streams the same rows the same way: the text of one jsonb
// column, looked at in place and never kept, so that what is measured is
// the driver, not the consumer.
package bench

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx" with database/sql
	"github.com/lib/pq"                // also registers "postgres"

	"github.com/jsonstream/jsonstream"
)

// Environment variables through which cmd/report hands its server and
// dataset to the benchmark processes it starts. Without EnvDSN the
// benchmarks start a throwaway server of their own.
const (
	// EnvDSN is the lib/pq key=value or URL DSN of the server to use.
	EnvDSN = "JSONSTREAM_BENCH_DSN"
	// EnvRows is the number of documents to benchmark up to, 1,000,000 by
	// default; the dataset is loaded at that size unless the server already
	// holds it.
	EnvRows = "JSONSTREAM_BENCH_ROWS"
)

// DefaultRows is the size of the full dataset, the largest result the
// benchmarks stream.
const DefaultRows = 1_000_000

// ShortRows is the dataset size under -short: small enough for CI's smoke
// run to load and stream in seconds.
const ShortRows = 10_000

// Sizes are the result sizes the streaming benchmarks read.
var Sizes = []int{1_000, 10_000, 50_000, 100_000, 1_000_000}

// RowsFromEnv returns the dataset size that EnvRows asks for, or def.
func RowsFromEnv(def int) (int, error) {
	v := os.Getenv(EnvRows)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("bench: %s=%q is not a positive number", EnvRows, v)
	}
	return n, nil
}

// Client is one way of reading query results: a driver and an API.
type Client struct {
	// Name names the client in benchmark names and in the report.
	Name string
	// Open connects to the server at dsn.
	Open func(ctx context.Context, dsn string) (Conn, error)
}

// Conn is an open Client.
type Conn interface {
	// Stream runs query and calls fn with the first column of each row,
	// in the form the driver delivers it, until the rows end or fn returns
	// false; then it closes the rows, which for an unfinished result is
	// the early close each driver does its own way. data is only valid
	// during the call.
	Stream(ctx context.Context, query string, fn func(data []byte) bool) error
	// SelectOne runs SELECT 1 and reads its row: the next query of an
	// application, which pays for whatever the previous close left behind.
	SelectOne(ctx context.Context) error
	// Close closes the connection or pool.
	Close() error
}

// Client names. LibPQ is the baseline every ratio in the report is
// against: it is what jsonstream wraps. Jsonstream is
// sql.Open("jsonstream", dsn) without options: its reads are portal
// streams, the default mode.
const (
	Jsonstream = "jsonstream"
	LibPQ      = "libpq"
	PgxStdlib  = "pgx-stdlib"
	PgxNative  = "pgx-native"
)

// Clients are the clients every real-server benchmark compares, in the
// report's order.
var Clients = []Client{
	{Name: Jsonstream, Open: openSQL(jsonstream.DriverName)},
	{Name: LibPQ, Open: openSQL("postgres")},
	{Name: PgxStdlib, Open: openSQL("pgx")},
	{Name: PgxNative, Open: openPgx},
}

// Clients of the mode benchmarks beyond Clients. The Jsonstream client,
// opened with sql.Open and no WithStreamMode, reads in portal mode, the
// default; these pin the other modes, to set them beside it.
const (
	// JsonstreamSingle is the single-statement mode: the query sent as
	// lib/pq sends it, whose early Close (CloseAuto) waits a moment for
	// the rest and then cuts the connection.
	JsonstreamSingle = "jsonstream-single"
	// JsonstreamCursorAuto is the cursor mode with batches that grow
	// (FetchAuto).
	JsonstreamCursorAuto = "jsonstream-cursor-auto"
	// JsonstreamCursorFixed is the cursor mode with batches of
	// FixedFetchSize rows.
	JsonstreamCursorFixed = "jsonstream-cursor-1000"
)

// FixedFetchSize is the batch of JsonstreamCursorFixed: about 280 KB of
// documents, a batch whose rest costs an early Close well under a
// millisecond on loopback, and a round trip per thousand rows.
const FixedFetchSize = 1000

// ModeClients are the clients that pin a mode other than the default.
// They are kept apart from Clients so that the benchmarks comparing the
// drivers do not grow by them.
var ModeClients = []Client{
	{Name: JsonstreamSingle, Open: openJsonstream(jsonstream.WithStreamMode(jsonstream.ModeSingle))},
	{Name: JsonstreamCursorAuto, Open: openJsonstream(jsonstream.WithFetchSize(jsonstream.FetchAuto))},
	{Name: JsonstreamCursorFixed, Open: openJsonstream(jsonstream.WithFetchSize(FixedFetchSize))},
}

// ClientNamed returns the client of Clients or ModeClients called name.
func ClientNamed(name string) (Client, bool) {
	for _, c := range append(Clients[:len(Clients):len(Clients)], ModeClients...) {
		if c.Name == name {
			return c, true
		}
	}
	return Client{}, false
}

// openJsonstream opens jsonstream over lib/pq with opts, through
// connectors: the DSN is then passed to lib/pq in whichever form it came.
func openJsonstream(opts ...jsonstream.Option) func(ctx context.Context, dsn string) (Conn, error) {
	return func(ctx context.Context, dsn string) (Conn, error) {
		cfg, err := pq.NewConfig(dsn)
		if err != nil {
			return nil, err
		}
		// As sql.Open("jsonstream", dsn) does: jsonstream's dialer
		// negotiates TLS.
		connector, err := jsonstream.NewConnectorConfig(cfg, opts...)
		if err != nil {
			return nil, err
		}
		return pingSQL(ctx, sql.OpenDB(connector))
	}
}

func pingSQL(ctx context.Context, db *sql.DB) (Conn, error) {
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, err
	}
	return SQLConn{db}, nil
}

// SQLConn is a Conn over database/sql.
type SQLConn struct{ DB *sql.DB }

func openSQL(driverName string) func(ctx context.Context, dsn string) (Conn, error) {
	return func(ctx context.Context, dsn string) (Conn, error) {
		db, err := sql.Open(driverName, dsn)
		if err != nil {
			return nil, err
		}
		return pingSQL(ctx, db)
	}
}

// Stream implements Conn.
func (c SQLConn) Stream(ctx context.Context, query string, fn func([]byte) bool) error {
	return streamSQL(ctx, c.DB, query, fn)
}

// queryer is where database/sql runs a query: a pool (*sql.DB), one of
// its connections (*sql.Conn) or a transaction (*sql.Tx).
type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// streamSQL is Conn.Stream over database/sql, on q.
func streamSQL(ctx context.Context, q queryer, query string, fn func([]byte) bool) error {
	rows, err := q.QueryContext(ctx, query)
	if err != nil {
		return err
	}
	var data sql.RawBytes
	// One argument slice for all rows: rows.Scan(&data) would allocate a
	// new one per row, a cost of this loop rather than of the driver.
	dest := []any{&data}
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			_ = rows.Close()
			return err
		}
		if !fn(data) {
			break
		}
	}
	if err := rows.Close(); err != nil {
		return err
	}
	return rows.Err()
}

// SelectOne implements Conn.
func (c SQLConn) SelectOne(ctx context.Context) error {
	var one int
	return c.DB.QueryRowContext(ctx, "SELECT 1").Scan(&one)
}

// Close implements Conn.
func (c SQLConn) Close() error { return c.DB.Close() }

// pgxConn is a Conn over one native pgx connection.
type pgxConn struct{ conn *pgx.Conn }

func openPgx(ctx context.Context, dsn string) (Conn, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, err
	}
	return pgxConn{conn}, nil
}

// Stream implements Conn.
func (c pgxConn) Stream(ctx context.Context, query string, fn func([]byte) bool) error {
	rows, err := c.conn.Query(ctx, query)
	if err != nil {
		return err
	}
	defer rows.Close()
	skip := -1
	for rows.Next() {
		if skip < 0 {
			// pgx asks for jsonb in binary form: a version byte before
			// the same text the other clients get.
			skip = 0
			if fd := rows.FieldDescriptions()[0]; fd.Format == pgx.BinaryFormatCode && fd.DataTypeOID == pgtype.JSONBOID {
				skip = 1
			}
		}
		if !fn(rows.RawValues()[0][skip:]) {
			break
		}
	}
	rows.Close()
	return rows.Err()
}

// SelectOne implements Conn.
func (c pgxConn) SelectOne(ctx context.Context) error {
	var one int
	return c.conn.QueryRow(ctx, "SELECT 1").Scan(&one)
}

// Close implements Conn.
func (c pgxConn) Close() error { return c.conn.Close(context.Background()) }
