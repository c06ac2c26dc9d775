package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Review tests of the portal mode: each pins a case where a portal stream
// differs from lib/pq, or leaves the connection in a state lib/pq does not
// expect.

// rawConn runs f with the lib/pq connection beneath conn.
func rawConn(t *testing.T, conn *sql.Conn, f func(inner driver.Conn)) {
	t.Helper()
	require.NoError(t, conn.Raw(func(dc any) error {
		inner := dc.(driver.Conn)
		if u, ok := dc.(interface{ Unwrap() driver.Conn }); ok {
			inner = u.Unwrap()
		}
		f(inner)
		return nil
	}))
}

// TestPortalReviewByteaArgInLatin1Database: a string argument for a bytea
// parameter is bound as lib/pq binds it. lib/pq sends it in hex, so the
// bytes stored are the string's UTF-8 bytes whatever the database's
// encoding. Sent as plain text, the value is first converted from the
// client encoding (UTF8) to the server's: in a LATIN1 database "é" (C3 A9)
// becomes the single byte E9. The "same bytes unless a backslash, a NUL or
// invalid UTF-8" rule holds only for a UTF8 (or SQL_ASCII) database.
func TestPortalReviewByteaArgInLatin1Database(t *testing.T) {
	admin := openPG(t, "postgres", "")
	const dbName = "portal_review_latin1"
	var exists bool
	require.NoError(t, admin.QueryRow("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", dbName).Scan(&exists))
	if !exists {
		_, err := admin.Exec("CREATE DATABASE " + dbName + " ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
		require.NoError(t, err)
	}
	byteas := func(t *testing.T, driverName, extra string) []string {
		db := openPG(t, driverName, extra+" dbname="+dbName)
		var got []string
		for _, arg := range []any{"é", []byte("é")} {
			var b []byte
			require.NoError(t, db.QueryRow("SELECT $1::bytea", arg).Scan(&b))
			got = append(got, fmt.Sprintf("%T %x", arg, b))
		}
		return got
	}
	want := byteas(t, "postgres", "")
	assert.Equal(t, []string{"string c3a9", "[]uint8 c3a9"}, want)
	assert.Equal(t, want, byteas(t, DriverName, ""), "single statement")
	assert.Equal(t, want, byteas(t, DriverName, portalDSN), "portal")
}

// TestPortalReviewContextDuringStartLeavesNoDeadline: a context that ends
// while Query waits for the server's first reply bounds that read with a
// deadline on the socket (interrupt). When the reply then comes within the
// bound, and the query failed on the server, Query returns the context's
// error and the connection goes back to the pool as usable, but the
// deadline stays armed: a later query on the connection fails with an i/o
// timeout.
func TestPortalReviewContextDuringStartLeavesNoDeadline(t *testing.T) {
	db := openPG(t, DriverName, portalDSN)
	conn, pid := backend(t, db)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	s := mustStream(t, WithDrainTimeout(time.Second))
	_, err := conn.QueryContext(ctx, "SELECT 1/(g - 1) FROM pg_sleep(0.3), generate_series(1, 1) g", s)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	// Past the deadline the failure armed.
	time.Sleep(1200 * time.Millisecond)
	var n int
	require.NoError(t, conn.QueryRowContext(context.Background(), "SELECT 1").Scan(&n),
		"the next query must not meet the failed query's deadline")
	assert.Equal(t, pid, pidOf(t, conn))
}

// TestPortalReviewFailureKeepsCurrentRow: the row Next returned stays
// valid until the next Next, as lib/pq's does. A failure from another
// goroutine (Cancel here; the pause timeout and the context's watch
// alike) ends the portal at once (release), reading what is in flight
// into the wire's buffer, which the current row's []byte values alias:
// the consumer's Scan, which database/sql allows until the next Next,
// then reads other bytes (and the race detector reports the race).
func TestPortalReviewFailureKeepsCurrentRow(t *testing.T) {
	db := openPG(t, DriverName, portalDSN)
	s := mustStream(t)
	rows, err := db.Query(`SELECT json_build_object('g', g, 'pad', repeat('x', 4000))
		FROM generate_series(1, 1000) g`, s)
	require.NoError(t, err)
	defer rows.Close()
	require.True(t, rows.Next())
	require.NoError(t, s.Cancel())
	time.Sleep(300 * time.Millisecond) // the failure ends the portal
	var v string
	require.NoError(t, rows.Scan(&v))
	assert.True(t, strings.HasPrefix(v, `{"g" : 1, "pad" : "xxx`), "the current row changed under the consumer: %.40q", v)
}

// TestPortalReviewCancelBetweenReads: a Cancel that lands while Next is
// between two reads (here: in the notice handler, which Next calls; any
// moment between reads is the same) finds no read pending (interrupt does
// nothing) and the wire held (release does nothing). The read that
// follows is then unbounded, and Next waits for the server however long
// it takes to produce the next row, instead of returning ErrCanceled
// within the drain timeout.
func TestPortalReviewCancelBetweenReads(t *testing.T) {
	setup := openPG(t, "postgres", "")
	_, err := setup.Exec(`CREATE OR REPLACE FUNCTION portal_review_slow(v int) RETURNS int
		LANGUAGE plpgsql AS $$ BEGIN RAISE NOTICE 'row %', v; IF v = 2 THEN PERFORM pg_sleep(3); END IF; RETURN v; END $$`)
	require.NoError(t, err)
	db := openPG(t, DriverName, portalDSN)
	conn, err := db.Conn(context.Background())
	require.NoError(t, err)
	defer conn.Close()
	s := mustStream(t)
	rawConn(t, conn, func(inner driver.Conn) {
		pq.SetNoticeHandler(inner, func(e *pq.Error) {
			if e.Message == "row 2" {
				require.NoError(t, s.Cancel())
			}
		})
	})
	rows, err := conn.QueryContext(context.Background(), "SELECT portal_review_slow(g) FROM generate_series(1, 3) g", s)
	require.NoError(t, err)
	defer rows.Close()
	require.True(t, rows.Next())
	start := time.Now()
	for rows.Next() {
	}
	took := time.Since(start)
	assert.ErrorIs(t, rows.Err(), ErrCanceled)
	assert.Less(t, took, time.Second, "Cancel must bound the read Next waits in")
}

// TestPortalReviewContextBetweenReadsInQuery: the same for Query: a
// context that ends while start is between two reads leaves the next read
// unbounded, and Query waits out the server's query, where lib/pq's
// cancel request stops it.
func TestPortalReviewContextBetweenReadsInQuery(t *testing.T) {
	setup := openPG(t, "postgres", "")
	_, err := setup.Exec(`CREATE OR REPLACE FUNCTION portal_review_slow1() RETURNS int
		LANGUAGE plpgsql AS $$ BEGIN RAISE NOTICE 'started'; PERFORM pg_sleep(3); RETURN 1; END $$`)
	require.NoError(t, err)
	db := openPG(t, DriverName, portalDSN)
	conn, err := db.Conn(context.Background())
	require.NoError(t, err)
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rawConn(t, conn, func(inner driver.Conn) {
		pq.SetNoticeHandler(inner, func(*pq.Error) {
			cancel()
			time.Sleep(50 * time.Millisecond) // the context's watch runs now
		})
	})
	start := time.Now()
	_, err = conn.QueryContext(ctx, "SELECT portal_review_slow1()")
	took := time.Since(start)
	assert.ErrorIs(t, err, context.Canceled)
	assert.Less(t, took, time.Second, "the context must bound the read Query waits in")
}

// TestPortalReviewTimeZoneSetInTransaction: in a transaction block the
// first batch is asked for with a Sync, and the server reports a changed
// TimeZone (ParameterStatus) before that Sync's ReadyForQuery, in the
// middle of the result. lib/pq reads the report after the whole result and
// decodes every row of it in the TimeZone the query started in; the portal
// stream decodes the rows after the first batch in the new one.
func TestPortalReviewTimeZoneSetInTransaction(t *testing.T) {
	bothIn(t, portalModes, func(t *testing.T, db *sql.DB) []string {
		tx, err := db.Begin()
		require.NoError(t, err)
		defer tx.Rollback() //nolint:errcheck
		_, err = tx.Exec("SET LOCAL TimeZone = 'UTC'")
		require.NoError(t, err)
		rows, err := tx.Query(`SELECT set_config('TimeZone', 'America/New_York', true),
			'2024-01-01 00:00:00+00'::timestamptz FROM generate_series(1, 100)`)
		require.NoError(t, err)
		var locs []string
		for i := 1; rows.Next(); i++ {
			var s string
			var ts time.Time
			require.NoError(t, rows.Scan(&s, &ts))
			if l := fmt.Sprintf("%q", ts.Location()); len(locs) == 0 || locs[len(locs)-1] != l {
				locs = append(locs, l)
			}
		}
		require.NoError(t, rows.Err())
		return locs
	})
}

// TestPortalReviewQueryWhileStreamOpen: database/sql lets a connection run
// another statement while a query's rows are open. lib/pq refuses it (the
// connection is in the middle of a query) and the open rows go on. A
// portal stream leaves lib/pq idle, so lib/pq sends the statement in the
// middle of the stream and reads the stream's rows as its reply.
func TestPortalReviewQueryWhileStreamOpen(t *testing.T) {
	bothIn(t, portalModes, func(t *testing.T, db *sql.DB) []string {
		ctx := context.Background()
		conn, err := db.Conn(ctx)
		require.NoError(t, err)
		defer conn.Close()
		rows, err := conn.QueryContext(ctx, "SELECT g FROM generate_series(1, 100000) g")
		require.NoError(t, err)
		require.True(t, rows.Next())
		_, execErr := conn.ExecContext(ctx, "SELECT 1")
		n, sum := 1, 1
		for rows.Next() {
			var g int
			require.NoError(t, rows.Scan(&g))
			n++
			sum += g
		}
		return []string{errString(execErr), fmt.Sprint(n, sum), errString(rows.Err()), errString(rows.Close())}
	})
}

// TestPortalReviewSecondPortalInTransaction: the same inside a transaction
// block, with a second query that portal mode itself would run: the first
// stream's first batch ends with a Sync, whose ReadyForQuery makes the
// connection look idle (portalReady) while the first portal is still
// open, so the second stream's Bind replaces it.
func TestPortalReviewSecondPortalInTransaction(t *testing.T) {
	bothIn(t, portalModes, func(t *testing.T, db *sql.DB) []string {
		tx, err := db.Begin()
		require.NoError(t, err)
		defer tx.Rollback() //nolint:errcheck
		rows, err := tx.Query("SELECT g FROM generate_series(1, 100000) g")
		require.NoError(t, err)
		require.True(t, rows.Next())
		var one int
		second := tx.QueryRow("SELECT 1").Scan(&one)
		n := 1
		for rows.Next() {
			n++
		}
		return []string{errString(second), fmt.Sprint(n), errString(rows.Err()), errString(rows.Close())}
	})
}
