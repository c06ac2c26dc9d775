package jsonstream

import (
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// recordWrites records what is written to s from now on, one string per
// write: its messages' types, an Execute's with its row count ("E0"),
// a Describe's with what it describes ("DS", "DP").
func recordWrites(t *testing.T, s *fakeSock) (get func() []string) {
	t.Helper()
	var mu sync.Mutex
	var writes []string
	rec := func(b []byte) {
		var w strings.Builder
		for len(b) >= 5 {
			typ, n := b[0], int(binary.BigEndian.Uint32(b[1:]))
			if n < 4 || 1+n > len(b) {
				w.WriteString("?")
				break
			}
			w.WriteByte(typ)
			body := b[5 : 1+n]
			switch {
			case typ == 'E' && len(body) >= 5:
				fmt.Fprint(&w, binary.BigEndian.Uint32(body[len(body)-4:]))
			case typ == 'D' && len(body) >= 1:
				w.WriteByte(body[0])
			}
			b = b[1+n:]
		}
		mu.Lock()
		writes = append(writes, w.String())
		mu.Unlock()
	}
	s.beforeWrite.Store(&rec)
	t.Cleanup(func() { s.beforeWrite.Store(nil) })
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), writes...)
	}
}

// TestBoundedQueryOneExchange: a read whose text bounds its result to the
// first batch (bounded.go) asks for it whole, with its Sync, in the
// query's own write: a simple Query without arguments, as lib/pq sends
// it; Parse, Describe, Bind, Execute of every row and Sync with them. Any
// other read's first batch goes with Flush outside a transaction block,
// and its end takes a Sync of its own: a second round trip.
func TestBoundedQueryOneExchange(t *testing.T) {
	needRowsTable(t)
	for _, tc := range []struct {
		name, query string
		args        []any
		inTx        bool
		want        []string
	}{
		{"SELECT 1", "SELECT 1", nil, false, []string{"Q"}},
		{"SELECT 1 in BeginTx", "SELECT 1", nil, true, []string{"Q"}},
		{"LIMIT", "SELECT g FROM jsonstream_test_rows ORDER BY g LIMIT 3", nil, false, []string{"Q"}},
		{"SHOW", "SHOW TimeZone", nil, false, []string{"Q"}},
		{"an argument", "SELECT $1::int", []any{7}, false, []string{"PDSBE0S"}},
		{"an argument and LIMIT", "SELECT g FROM jsonstream_test_rows WHERE g >= $1 ORDER BY g LIMIT 16", []any{7}, false, []string{"PDSBE0S"}},
		{"an argument in BeginTx", "SELECT $1::int", []any{7}, true, []string{"PDSBE0S"}},
		// Not bounded: a function may return a set.
		{"a function", "SELECT abs(1)", nil, false, []string{"PBDPE16H", "S"}},
		{"a function in BeginTx", "SELECT abs(1)", nil, true, []string{"PBDPE16S"}},
		{"a function and an argument", "SELECT abs($1::int)", []any{7}, false, []string{"PDSBE16H", "S"}},
		{"LIMIT past the first batch", "SELECT g FROM jsonstream_test_rows ORDER BY g LIMIT 17", nil, false, []string{"PBDPE16H", "E32H", "S"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &fakeDialer{}
			db := openDialed(t, d)
			ctx := context.Background()
			var q interface {
				QueryContext(context.Context, string, ...any) (*sql.Rows, error)
			} = db
			if tc.inTx {
				tx, err := db.BeginTx(ctx, nil)
				require.NoError(t, err)
				defer func() { _ = tx.Rollback() }()
				q = tx
			} else {
				require.NoError(t, db.Ping())
			}
			get := recordWrites(t, d.last())
			rec := &recorder{}
			rows, err := q.QueryContext(ctx, tc.query, append(tc.args, mustStream(t, WithObserver(rec)))...)
			require.NoError(t, err)
			got := scanAll(t, rows)
			assert.NotEmpty(t, got)
			assert.Equal(t, tc.want, get(), "the stream's writes")
			assert.Equal(t, ModePortal, rec.ended(t).Mode)
			assert.Equal(t, OutcomeComplete, rec.ended(t).Outcome)
		})
	}
}

// TestBoundedStmtOneExchange: a prepared statement's bounded query binds
// the statement and asks for the whole result with Sync in one write,
// once the statement was described.
func TestBoundedStmtOneExchange(t *testing.T) {
	d := &fakeDialer{}
	db := openDialed(t, d)
	st, err := db.Prepare("SELECT $1::int")
	require.NoError(t, err)
	defer func() { _ = st.Close() }()
	var v int
	require.NoError(t, st.QueryRow(1).Scan(&v)) // describes the statement
	get := recordWrites(t, d.last())
	require.NoError(t, st.QueryRow(2).Scan(&v))
	assert.Equal(t, 2, v)
	assert.Equal(t, []string{"BE0S"}, get())
}

// TestBoundedEndings: every ending of a bounded stream after its first
// row reads off the rest, whose whole was asked for: the connection, its
// session and the caller's transaction stay, and the Close reports a
// drain, not a portal closed.
func TestBoundedEndings(t *testing.T) {
	const q = "SELECT g FROM generate_series(1, 1000) g LIMIT 16"
	for _, how := range []string{"close/auto", "close/drain", "close/cut", "cancel", "pause timeout", "context"} {
		for _, where := range []string{"autocommit", "BeginTx", "Exec(BEGIN)"} {
			t.Run(how+"/"+where, func(t *testing.T) {
				closeMode := "auto"
				if m, ok := strings.CutPrefix(how, "close/"); ok {
					closeMode = m
				}
				db := openPG(t, DriverName, "jsonstream_close="+closeMode)
				conn, pid := backend(t, db)
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				_, err := conn.ExecContext(ctx, "CREATE TEMP TABLE bounded_kept (a int)")
				require.NoError(t, err)
				tq, tx := enterTx(t, conn, where)
				_, err = tq.ExecContext(ctx, "INSERT INTO bounded_kept VALUES (1)")
				require.NoError(t, err)
				rec := &recorder{}
				s := mustStream(t, WithObserver(rec), WithPauseTimeout(50*time.Millisecond))
				rows, err := tq.QueryContext(ctx, q, s)
				require.NoError(t, err)
				require.True(t, rows.Next())
				var want error
				outcome := OutcomeDrained
				if !strings.HasPrefix(how, "close/") {
					// Paused, the next Next waits for the failure.
					require.NoError(t, s.Pause())
				}
				switch how {
				case "cancel":
					require.NoError(t, s.Cancel())
					want, outcome = ErrCanceled, OutcomeCanceled
				case "pause timeout":
					want, outcome = ErrPauseTimeout, OutcomePauseTimeout
				case "context":
					cancel()
					want, outcome = context.Canceled, OutcomeContext
				}
				if want != nil {
					assert.False(t, rows.Next())
					assert.ErrorIs(t, rows.Err(), want)
				}
				_ = rows.Close()
				end := rec.ended(t)
				assert.Equal(t, ModePortal, end.Mode)
				assert.False(t, end.ConnCut, "the connection was cut")
				assert.Equal(t, outcome, end.Outcome)
				txGoesOn(t, conn, tq, tx, where, "bounded_kept", pid)
			})
		}
	}
}

// TestBoundedAsLibPQ: bounded queries through jsonstream's default mode
// return what lib/pq returns: columns and their types, values, NULLs,
// and errors before the first row and after it, in autocommit and in a
// transaction that an error aborts.
func TestBoundedAsLibPQ(t *testing.T) {
	inDefaultMode(t, func(t *testing.T, db *sql.DB) []string {
		var out []string
		run := func(q interface {
			Query(string, ...any) (*sql.Rows, error)
		}, query string, args ...any) {
			rows, err := q.Query(query, args...)
			if err != nil {
				out = append(out, query+": "+errText(err))
				return
			}
			types, err := rows.ColumnTypes()
			require.NoError(t, err)
			for _, ct := range types {
				n, nOK := ct.Length()
				p, s, psOK := ct.DecimalSize()
				out = append(out, fmt.Sprint(ct.Name(), ct.DatabaseTypeName(), ct.ScanType(), n, nOK, p, s, psOK))
			}
			for rows.Next() {
				vals := make([]any, len(types))
				ptrs := make([]any, len(types))
				for i := range vals {
					ptrs[i] = &vals[i]
				}
				require.NoError(t, rows.Scan(ptrs...))
				out = append(out, fmt.Sprintf("%#v", vals))
			}
			out = append(out, query+": "+errText(rows.Err()), errText(rows.Close()))
		}
		queries := []struct {
			q    string
			args []any
		}{
			{"SELECT 1", nil},
			{"SELECT 1 AS a, 'x'::varchar(3) AS b, NULL::numeric(5,2) AS c, 1.5::numeric(4,1), true, '\\x0102'::bytea", nil},
			{"SELECT $1::int, $2::text, $3::bytea, $4::jsonb", []any{7, "t", []byte{1, 2}, `{"a": 1}`}},
			{"SELECT $1::timestamptz, 'infinity'::timestamptz, '2001-02-03'::date", []any{time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)}},
			{"SELECT 1 WHERE false", nil},
			{"SELECT g, 10 / (3 - g) FROM generate_series(1, 5) g LIMIT 5", nil},
			{"SELECT g, 10 / (3 - g) FROM generate_series(1, 5) g WHERE g > $1 LIMIT 5", []any{0}},
			{"SELECT no_such_column LIMIT 1", nil},
			{"SELECT $1::int LIMIT 1", []any{"x"}},
			{"SELECT g FROM generate_series(1, 100) g ORDER BY g DESC FETCH FIRST 16 ROWS ONLY", nil},
			{"SHOW TimeZone", nil},
			{"SHOW no_such_setting", nil},
		}
		for _, tc := range queries {
			run(db, tc.q, tc.args...)
		}
		tx, err := db.Begin()
		require.NoError(t, err)
		for _, tc := range queries {
			run(tx, tc.q, tc.args...)
		}
		out = append(out, errText(tx.Rollback()))
		return out
	})
}

// TestBoundedWritingFunctionCommits: a bounded SELECT that calls a
// function that writes runs whole and commits at the end of its one
// exchange, whatever the consumer reads of it, as lib/pq's Close reads
// it to its end and commits: closed at once, every row's write stays.
func TestBoundedWritingFunctionCommits(t *testing.T) {
	setup := slowCommitSetup(t)
	const q = "SELECT jsonstream_slow_commit($1, 0) FROM generate_series(1, 40) LIMIT 16"
	// Cursor mode rolls such a SELECT back when it is closed with rows
	// left in its own transaction (see the README's "Stopping early").
	bothSingle(t, func(t *testing.T, db *sql.DB) int {
		round := time.Now().UnixNano()
		rows, err := db.Query(q, round)
		require.NoError(t, err)
		require.NoError(t, rows.Close())
		return slowCommitted(t, setup, round)
	})
}

// TestBoundedCloseCutLooksOnly: under CloseCut, a bounded stream closed
// with the rest of its result not yet arrived looks only at what has
// arrived (drainGrace) and cuts, as the mode says, rather than wait for
// the end it asked for with the query. Here the socket hands out the
// reply up to the first row, and the rest never comes.
func TestBoundedCloseCutLooksOnly(t *testing.T) {
	d := &fakeDialer{}
	db := openDialed(t, d)
	require.NoError(t, db.Ping())
	s := d.last()
	var held atomic.Bool
	shape := func(p []byte, n int) int {
		if held.Load() {
			return 0 // the rest never comes
		}
		for off := 0; off+5 <= n; {
			typ, size := p[off], int(binary.BigEndian.Uint32(p[off+1:]))
			if off+1+size > n {
				break
			}
			off += 1 + size
			if typ == 'D' {
				held.Store(true)
				return off
			}
		}
		return n
	}
	s.shape.Store(&shape)
	rec := &recorder{}
	rows, err := db.Query("SELECT g FROM generate_series(1, 16) g LIMIT 16", mustStream(t, WithObserver(rec), WithCloseMode(CloseCut)))
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.True(t, held.Load(), "the reply was not held back after its first row")
	start := time.Now()
	_ = rows.Close()
	took := time.Since(start)
	assert.Less(t, took, 500*time.Millisecond, "Close waited for the end it had asked for")
	end := rec.ended(t)
	assert.Equal(t, OutcomeCut, end.Outcome)
	assert.True(t, end.ConnCut)
	s.shape.Store(nil)
	var one int
	require.NoError(t, db.QueryRow("SELECT 1").Scan(&one), "the pool serves the next query")
}
