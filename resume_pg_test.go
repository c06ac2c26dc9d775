package jsonstream

import (
	"bufio"
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// resumeN is how many rows the resume tests stream: the 1,000,000 of
// the proof.
const resumeN = 1_000_000

// checksum is the count, the sum and a running hash of the keys of an
// ordered result: equal checksums mean the same keys, in the same order,
// each once.
type checksum struct{ count, sum, hash int64 }

func (c *checksum) add(k int64) {
	c.count++
	c.sum += k
	c.hash = c.hash*31 + k
}

// wantChecksum is the checksum of 1..n.
func wantChecksum(n int) checksum {
	var c checksum
	for k := int64(1); k <= int64(n); k++ {
		c.add(k)
	}
	return c
}

// eventLog keeps the kinds of events and the EventContinued ones.
type eventLog struct {
	mu        sync.Mutex
	kinds     []EventKind
	continued []Event
	ended     []Event
}

func (l *eventLog) ObserveStream(e Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.kinds = append(l.kinds, e.Kind)
	switch e.Kind {
	case EventContinued:
		l.continued = append(l.continued, e)
	case EventEnded:
		l.ended = append(l.ended, e)
	}
}

func (l *eventLog) count(k EventKind) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, got := range l.kinds {
		if got == k {
			n++
		}
	}
	return n
}

// TestResumeAfterSessionEnded: a resumable stream whose session the
// server ends in the middle (pg_terminate_backend) goes on from the last
// key on a new connection, in every stream mode, and delivers every row
// exactly once, in order. The Stream follows it (Pause and Resume after
// the continuation act on it), Stats count across it, the Observer sees
// one stream with one EventContinued, and the pool never hands out the
// dead connection.
func TestResumeAfterSessionEnded(t *testing.T) {
	needRowsTable(t)
	monitor := openPG(t, "postgres", "")
	for _, mode := range []string{"", "jsonstream_mode=single", "jsonstream_fetch_size=auto"} {
		t.Run("mode="+mode, func(t *testing.T) {
			db := openPG(t, DriverName, mode)
			db.SetMaxOpenConns(1)
			ctx := context.Background()
			var pid int
			require.NoError(t, db.QueryRow("SELECT pg_backend_pid()").Scan(&pid))
			log := &eventLog{}
			s := mustStream(t, WithResumeKey(Asc("g")), WithObserver(log), WithObserverQueryText(true))
			rows, err := db.QueryContext(ctx, bigQuery, resumeN, s)
			require.NoError(t, err)
			var got checksum
			var g int64
			var pad string
			for rows.Next() {
				require.NoError(t, rows.Scan(&g, &pad))
				got.add(g)
				switch got.count {
				case 1000:
					_, err := monitor.Exec("SELECT pg_terminate_backend($1)", pid)
					require.NoError(t, err)
				case resumeN - 1000:
					require.NoError(t, s.Pause())
					require.Equal(t, Paused, s.State())
					require.NoError(t, s.Resume())
				}
			}
			require.NoError(t, rows.Err())
			st := s.Stats()
			require.NoError(t, rows.Close())
			assert.Equal(t, wantChecksum(resumeN), got)
			assert.Equal(t, int64(1), st.Resumes)
			assert.Equal(t, int64(resumeN), st.Rows)
			assert.Equal(t, 1, log.count(EventStarted))
			assert.Equal(t, 1, log.count(EventEnded))
			require.Equal(t, 1, log.count(EventContinued))
			e := log.continued[0]
			assert.True(t, retryable(e.Err), "cause %v", e.Err)
			assert.Positive(t, e.Continued)
			assert.Equal(t, int64(1), e.Stats.Resumes)
			// One stream: its events carry its query, not the
			// continuation's.
			assert.Equal(t, bigQuery, e.Query)
			require.Len(t, log.ended, 1)
			assert.Equal(t, bigQuery, log.ended[0].Query)
			var other int
			require.NoError(t, db.QueryRow("SELECT pg_backend_pid()").Scan(&other))
			assert.NotEqual(t, pid, other, "the pool handed out the dead connection")
			sessionClean(t, db)
		})
	}
}

// TestResumeOnSameConnection: a failure that leaves the connection good
// (here a recovery conflict's SQLSTATE 40001, raised by the query itself
// on its first run only) is got past on the same connection, whether it
// comes after 1,000 rows or before the first (the query sorts what the
// failing function returns), in which case the query is run again whole
// and Query returns its rows.
func TestResumeOnSameConnection(t *testing.T) {
	needRowsTable(t)
	for name, order := range map[string]string{"mid-stream": "jsonstream_test_rows.g", "before the first row": "1"} {
		t.Run(name, func(t *testing.T) {
			db := openPG(t, DriverName, "")
			db.SetMaxOpenConns(1)
			ctx := context.Background()
			// A sequence, which a rollback does not undo, tells the first run.
			_, err := db.Exec(`CREATE TEMP SEQUENCE conflict_runs;
				CREATE FUNCTION pg_temp.conflict_once(g int) RETURNS int AS $$
				BEGIN
					IF g = 1000 AND nextval('conflict_runs') = 1 THEN
						RAISE EXCEPTION 'conflict with recovery' USING ERRCODE = '40001';
					END IF;
					RETURN g;
				END $$ LANGUAGE plpgsql VOLATILE`)
			require.NoError(t, err)
			var pid int
			require.NoError(t, db.QueryRow("SELECT pg_backend_pid()").Scan(&pid))
			log := &eventLog{}
			s := mustStream(t, WithResumeKey(Asc("g")), WithObserver(log))
			rows, err := db.QueryContext(ctx, "SELECT pg_temp.conflict_once(g) AS g, pg_backend_pid() AS pid "+
				"FROM jsonstream_test_rows WHERE g <= $1 ORDER BY "+order, 5000, s)
			require.NoError(t, err)
			var got checksum
			for rows.Next() {
				var g, p int64
				require.NoError(t, rows.Scan(&g, &p))
				got.add(g)
				assert.Equal(t, int64(pid), p)
			}
			require.NoError(t, rows.Err())
			require.NoError(t, rows.Close())
			assert.Equal(t, wantChecksum(5000), got)
			assert.Equal(t, int64(1), s.Stats().Resumes)
			assert.Equal(t, 1, log.count(EventStarted))
			assert.Equal(t, 1, log.count(EventContinued))
			assert.Equal(t, 1, log.count(EventEnded))
		})
	}
}

// TestResumeOrderChecked: a query not ordered by its key, a key that is
// not unique and a NULL key fail the stream with ErrResumeOrder at the
// first row that shows it, rather than risk a wrong continuation; a
// descending key of a query ordered so streams whole.
func TestResumeOrderChecked(t *testing.T) {
	db := openPG(t, DriverName, "")
	ctx := context.Background()
	fails := map[string]struct {
		query string
		key   []KeyColumn
		at    int
	}{
		"unordered":  {"SELECT g FROM generate_series(1, 10) g ORDER BY g % 3, g", []KeyColumn{Asc("g")}, 4},
		"not unique": {"SELECT g / 2 AS k FROM generate_series(1, 10) g ORDER BY 1", []KeyColumn{Asc("k")}, 3},
		"wrong way":  {"SELECT g FROM generate_series(1, 10) g ORDER BY g", []KeyColumn{Desc("g")}, 2},
		"NULL":       {"SELECT nullif(g, 3) AS g FROM generate_series(1, 10) g ORDER BY g NULLS LAST", []KeyColumn{Asc("g")}, 10},
		"second column": {"SELECT g / 3 AS a, g % 2 AS b FROM generate_series(1, 10) g ORDER BY 1, 2",
			[]KeyColumn{Asc("a"), Asc("b")}, 5},
	}
	for name, c := range fails {
		t.Run(name, func(t *testing.T) {
			rows, err := db.QueryContext(ctx, c.query, mustStream(t, WithResumeKey(c.key...)))
			require.NoError(t, err)
			n := 0
			for rows.Next() {
				n++
			}
			require.ErrorIs(t, rows.Err(), ErrResumeOrder)
			assert.Equal(t, c.at-1, n, "rows delivered before the one that broke the order")
			require.NoError(t, rows.Close())
		})
	}
	t.Run("descending", func(t *testing.T) {
		rows, err := db.QueryContext(ctx, "SELECT g, -g AS h FROM generate_series(1, 100) g ORDER BY g DESC",
			mustStream(t, WithResumeKey(Desc("g"))))
		require.NoError(t, err)
		assert.Len(t, scanAll(t, rows), 100)
	})
	t.Run("mixed", func(t *testing.T) {
		rows, err := db.QueryContext(ctx, "SELECT g / 10 AS a, g % 10 AS b FROM generate_series(0, 99) g ORDER BY 1, 2 DESC",
			mustStream(t, WithResumeKey(Asc("a"), Desc("b"))))
		require.NoError(t, err)
		assert.Len(t, scanAll(t, rows), 100)
	})
}

// TestResumeRefused: what a resume key cannot serve fails with
// ErrResumeQuery, naming why, before anything runs (a transaction, several
// statements, a write, WithResumeRetry alone) or once the columns are
// known (a key that is not a column, or of a type jsonstream cannot
// order); bad options fail with ErrInvalidOption.
func TestResumeRefused(t *testing.T) {
	db := openPG(t, DriverName, "")
	ctx := context.Background()
	_, err := db.Exec("CREATE TEMP TABLE IF NOT EXISTS resume_w (g int)")
	require.NoError(t, err)
	key := func() *Stream { return mustStream(t, WithResumeKey(Asc("g"))) }
	cases := map[string]func() error{
		"transaction": func() error {
			tx, err := db.BeginTx(ctx, nil)
			require.NoError(t, err)
			defer func() { _ = tx.Rollback() }()
			_, err = tx.QueryContext(ctx, "SELECT 1 AS g", key())
			return err
		},
		"several statements": func() error {
			_, err := db.QueryContext(ctx, "SELECT 1 AS g; SELECT 2 AS g", key())
			return err
		},
		"write": func() error {
			_, err := db.QueryContext(ctx, "INSERT INTO resume_w VALUES (1) RETURNING g", key())
			return err
		},
		"retry without key": func() error {
			_, err := db.QueryContext(ctx, "SELECT 1 AS g", mustStream(t, WithResumeRetry(DefaultRetryPolicy)))
			return err
		},
		"no such column": func() error {
			_, err := db.QueryContext(ctx, "SELECT 1 AS h", key())
			return err
		},
		"unordered type": func() error {
			_, err := db.QueryContext(ctx, `SELECT '{}'::jsonb AS g`, key())
			return err
		},
		"text key": func() error {
			_, err := db.QueryContext(ctx, `SELECT 'a'::text AS g`, key())
			return err
		},
		"limit": func() error {
			_, err := db.QueryContext(ctx, `SELECT g FROM generate_series(1, 9) g ORDER BY g LIMIT 5`, key())
			return err
		},
		"fetch first": func() error {
			_, err := db.QueryContext(ctx, `(SELECT g FROM generate_series(1, 9) g ORDER BY g FETCH FIRST 5 ROWS ONLY)`, key())
			return err
		},
		"limit in a subquery": func() error {
			_, err := db.QueryContext(ctx, `SELECT g FROM (SELECT g FROM generate_series(1, 9) g ORDER BY g LIMIT 5) s ORDER BY g`, key())
			return err
		},
		"select into in a with": func() error {
			_, err := db.QueryContext(ctx, `WITH a AS (SELECT 1 AS g) SELECT g INTO resume_into FROM a`, key())
			return err
		},
	}
	for name, run := range cases {
		t.Run(name, func(t *testing.T) {
			err := run()
			require.ErrorIs(t, err, ErrResumeQuery)
			t.Log(err)
		})
	}
	var n int
	require.NoError(t, db.QueryRow("SELECT count(*) FROM resume_w").Scan(&n))
	assert.Zero(t, n, "the refused write ran")
	sessionClean(t, db)
	for name, opt := range map[string]Option{
		"no column":      WithResumeKey(),
		"twice":          WithResumeKey(Asc("g"), Desc("g")),
		"no name":        WithResumeKey(Asc("")),
		"no attempts":    WithResumeRetry(RetryPolicy{Total: 1}),
		"backoff > max":  WithResumeRetry(RetryPolicy{Attempts: 1, Backoff: 2, MaxBackoff: 1, Total: 1}),
		"no total":       WithResumeRetry(RetryPolicy{Attempts: 1}),
		"negative delay": WithResumeRetry(RetryPolicy{Attempts: 1, Backoff: -1, Total: 1}),
	} {
		_, err := NewStream(opt)
		assert.ErrorIs(t, err, ErrInvalidOption, name)
	}
}

// TestResumeGivesUp: a continuation that cannot reach the server fails
// the stream with a ResumeError after the policy's attempts, wrapping the
// last failure; an error a continuation cannot get past (a server error
// of the query itself) is returned as it is.
func TestResumeGivesUp(t *testing.T) {
	needRowsTable(t)
	monitor := openPG(t, "postgres", "")
	d := &fakeDialer{}
	db := openDialed(t, d)
	ctx := context.Background()
	var pid int
	require.NoError(t, db.QueryRow("SELECT pg_backend_pid()").Scan(&pid))
	s := mustStream(t, WithResumeKey(Asc("g")),
		WithResumeRetry(RetryPolicy{Attempts: 3, Backoff: 1e6, MaxBackoff: 4e6, Total: 1e10}))
	rows, err := db.QueryContext(ctx, bigQuery, resumeN, s)
	require.NoError(t, err)
	require.True(t, rows.Next())
	d.setRefuse(&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED})
	_, err = monitor.Exec("SELECT pg_terminate_backend($1)", pid)
	require.NoError(t, err)
	for rows.Next() {
	}
	var re *ResumeError
	require.ErrorAs(t, rows.Err(), &re)
	assert.Equal(t, 3, re.Attempts)
	assert.ErrorIs(t, re, syscall.ECONNREFUSED)
	require.NoError(t, rows.Close())

	t.Run("not retryable", func(t *testing.T) {
		d.setRefuse(nil)
		rows, err := db.QueryContext(ctx, "SELECT 10 / (10 - g) AS g FROM generate_series(1, 20) g ORDER BY g", mustStream(t, WithResumeKey(Asc("g"))))
		if err == nil {
			for rows.Next() {
			}
			err = rows.Err()
			_ = rows.Close()
		}
		var pe *pq.Error
		require.ErrorAs(t, err, &pe)
		assert.EqualValues(t, "22012", pe.Code)
	})
}

// TestResumeContinuationUsesIndex: the continuation of a query ordered by
// its table's primary key starts an index scan at the key, with no sort,
// for one and for two key columns (a row comparison), and returns exactly
// the rows after the key, also for a key of mixed directions.
func TestResumeContinuationUsesIndex(t *testing.T) {
	needRowsTable(t)
	db := openPG(t, "postgres", "")
	rr := &resumeRows{
		query: "SELECT g, pad FROM jsonstream_test_rows ORDER BY g",
		set:   resumeSettings{key: []KeyColumn{Asc("g")}},
		kinds: []keyKind{keyInt}, types: []string{"int4"}, idx: []int{0},
		last: []driver.Value{int64(1_500_000)}, have: true,
	}
	q, args := rr.continued()
	plan := explain(t, db, q, args)
	assert.Contains(t, plan, "Index Scan using jsonstream_test_rows_pkey")
	assert.Contains(t, plan, "Index Cond: (g > 1500000)")
	assert.False(t, sortsAll(plan), plan)
	assert.True(t, sortsAll(explain(t, db, "SELECT * FROM jsonstream_test_rows ORDER BY pad", nil)))
	var n, first int64
	require.NoError(t, db.QueryRow("SELECT count(*), min(g) FROM ("+q+") c", values(args)...).Scan(&n, &first))
	assert.Equal(t, int64(bigRows-1_500_000), n)
	assert.Equal(t, int64(1_500_001), first)

	rr.query = "SELECT g, g % 7 AS m, pad FROM jsonstream_test_rows ORDER BY g, m"
	rr.set.key = []KeyColumn{Asc("g"), Asc("m")}
	rr.kinds, rr.types, rr.idx = []keyKind{keyInt, keyInt}, []string{"int4", "int4"}, []int{0, 1}
	rr.last = []driver.Value{int64(1_500_000), int64(1_500_000 % 7)}
	q, args = rr.continued()
	assert.Contains(t, q, `("g", "m") > ($1::int4, $2::int4)`)
	plan = explain(t, db, q, args)
	// The query's own order needs an incremental sort by m within each
	// g, presorted by the index.
	assert.Contains(t, plan, "Index Scan using jsonstream_test_rows_pkey")
	assert.Contains(t, plan, "Index Cond: (g >= 1500000)")
	assert.False(t, sortsAll(plan), plan)

	rr.query = "SELECT g / 10 AS a, g % 10 AS b FROM generate_series(0, 99) g ORDER BY 1, 2 DESC"
	rr.set.key = []KeyColumn{Asc("a"), Desc("b")}
	rr.last = []driver.Value{int64(4), int64(3)}
	q, args = rr.continued()
	rows, err := db.Query(q, values(args)...)
	require.NoError(t, err)
	got := scanAll(t, rows)
	require.Len(t, got, 100-47)
	assert.Equal(t, []any{int64(4), int64(2)}, got[0])
	assert.Equal(t, []any{int64(5), int64(9)}, got[3])
}

// sortsAll reports whether a plan sorts its input whole (a Sort node; an
// Incremental Sort sorts groups of presorted rows).
func sortsAll(plan string) bool {
	for _, l := range strings.Split(plan, "\n") {
		l = strings.TrimLeft(strings.TrimSpace(l), "-> ")
		if strings.HasPrefix(l, "Sort  (") {
			return true
		}
	}
	return false
}

func explain(t *testing.T, db *sql.DB, q string, args []driver.NamedValue) string {
	t.Helper()
	rows, err := db.Query("EXPLAIN "+q, values(args)...)
	require.NoError(t, err)
	var lines []string
	for rows.Next() {
		var l string
		require.NoError(t, rows.Scan(&l))
		lines = append(lines, l)
	}
	require.NoError(t, rows.Err())
	return strings.Join(lines, "\n")
}

func values(args []driver.NamedValue) []any {
	v := make([]any, len(args))
	for i, a := range args {
		v[i] = a.Value
	}
	return v
}

// TestResumeThroughJSON: Each and WriteNDJSON read a resumable stream as
// they read any: past the end of its session, every document once, in
// order.
func TestResumeThroughJSON(t *testing.T) {
	needRowsTable(t)
	monitor := openPG(t, "postgres", "")
	const query = `SELECT g, json_build_object('g', g) AS doc FROM jsonstream_test_rows WHERE g <= $1 ORDER BY g`
	run := func(t *testing.T, read func(rows *sql.Rows, kill func()) checksum) {
		db := openPG(t, DriverName, "")
		db.SetMaxOpenConns(1)
		var pid int
		require.NoError(t, db.QueryRow("SELECT pg_backend_pid()").Scan(&pid))
		s := mustStream(t, WithResumeKey(Asc("g")))
		rows, err := db.QueryContext(context.Background(), query, 50_000, s)
		require.NoError(t, err)
		got := read(rows, func() {
			_, err := monitor.Exec("SELECT pg_terminate_backend($1)", pid)
			require.NoError(t, err)
		})
		assert.Equal(t, wantChecksum(50_000), got)
		assert.Equal(t, int64(1), s.Stats().Resumes)
	}
	t.Run("Each", func(t *testing.T) {
		run(t, func(rows *sql.Rows, kill func()) checksum {
			var got checksum
			for doc, err := range Each[struct{ G int64 }](rows, WithColumn("doc")) {
				require.NoError(t, err)
				if got.add(doc.G); got.count == 1000 {
					kill()
				}
			}
			return got
		})
	})
	t.Run("WriteNDJSON", func(t *testing.T) {
		run(t, func(rows *sql.Rows, kill func()) checksum {
			pr, pw := io.Pipe()
			done := make(chan error, 1)
			go func() {
				_, err := WriteNDJSON(context.Background(), pw, rows, WithColumn("doc"))
				done <- errors.Join(err, pw.Close())
			}()
			var got checksum
			sc := bufio.NewScanner(pr)
			for sc.Scan() {
				var doc struct{ G int64 }
				require.NoError(t, json.Unmarshal(sc.Bytes(), &doc))
				if got.add(doc.G); got.count == 1000 {
					kill()
				}
			}
			require.NoError(t, sc.Err())
			require.NoError(t, <-done)
			return got
		})
	})
}

// TestResumeControlsWhileRetrying: while a continuation is being made
// (here its connections are refused), the Stream's State is Running, a
// Pause is carried over to the continuation (which then waits for Resume
// before delivering a row), and a Cancel ends the retries at once with
// ErrCanceled. A session that ran SET is not continued on a new
// connection, which would not have what it set.
func TestResumeControlsWhileRetrying(t *testing.T) {
	needRowsTable(t)
	monitor := openPG(t, "postgres", "")
	ctx := context.Background()
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	slow := WithResumeRetry(RetryPolicy{Attempts: 1000, Backoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, Total: time.Minute})
	// start streams with a key, reads 10 rows, ends the session and has
	// the continuation's dials refused; it returns once one was.
	start := func(t *testing.T, d *fakeDialer, db *sql.DB) (*Stream, *sql.Rows) {
		var pid int
		require.NoError(t, db.QueryRow("SELECT pg_backend_pid()").Scan(&pid))
		s := mustStream(t, WithResumeKey(Asc("g")), slow)
		rows, err := db.QueryContext(ctx, bigQuery, 50_000, s)
		require.NoError(t, err)
		for i := 0; i < 10; i++ {
			require.True(t, rows.Next())
		}
		d.setRefuse(refused)
		_, err = monitor.Exec("SELECT pg_terminate_backend($1)", pid)
		require.NoError(t, err)
		return s, rows
	}
	// retrying waits until a continuation's dial was refused.
	retrying := func(t *testing.T, d *fakeDialer, before int64) {
		require.Eventually(t, func() bool { return d.attempts.Load() > before }, 30*time.Second, time.Millisecond)
	}

	t.Run("cancel", func(t *testing.T) {
		d := &fakeDialer{}
		db := openDialed(t, d)
		s, rows := start(t, d, db)
		before := d.attempts.Load()
		got := make(chan error, 1)
		go func() {
			for rows.Next() {
			}
			got <- rows.Err()
		}()
		retrying(t, d, before)
		assert.Equal(t, Running, s.State())
		require.NoError(t, s.Cancel())
		select {
		case err := <-got:
			require.ErrorIs(t, err, ErrCanceled)
		case <-time.After(10 * time.Second):
			t.Fatal("Cancel did not end the retries")
		}
		require.NoError(t, rows.Close())
	})

	t.Run("pause", func(t *testing.T) {
		d := &fakeDialer{}
		db := openDialed(t, d)
		s, rows := start(t, d, db)
		before := d.attempts.Load()
		read := make(chan int, 1)
		go func() {
			n := 10 // read by start
			for rows.Next() {
				n++
			}
			read <- n
		}()
		retrying(t, d, before)
		require.NoError(t, s.Pause())
		assert.Equal(t, Paused, s.State())
		delivered := s.Stats().Rows
		d.setRefuse(nil)
		require.Eventually(t, func() bool { return s.Stats().Resumes == 1 }, 30*time.Second, time.Millisecond)
		assert.Equal(t, Paused, s.State(), "the continuation is paused")
		time.Sleep(50 * time.Millisecond)
		assert.Equal(t, delivered, s.Stats().Rows, "no row while paused")
		require.NoError(t, s.Resume())
		assert.Equal(t, 50_000, <-read)
		require.NoError(t, rows.Err())
		require.NoError(t, rows.Close())
	})

	t.Run("SET", func(t *testing.T) {
		d := &fakeDialer{}
		db := openDialed(t, d)
		_, err := db.Exec("SET application_name TO 'resume_set'")
		require.NoError(t, err)
		_, rows := start(t, d, db)
		for rows.Next() {
		}
		require.ErrorIs(t, rows.Err(), ErrResumeQuery)
		assert.Contains(t, rows.Err().Error(), "SET, RESET or DISCARD")
		require.NoError(t, rows.Close())
	})
}

// TestResumeKeyRefusedFiresNoEvent: a resumable query whose result lacks
// its key column fails Query with ErrResumeQuery, as a Query that fails
// does: no event, and its Stream not used up, which the next query then
// takes.
func TestResumeKeyRefusedFiresNoEvent(t *testing.T) {
	db := openPG(t, DriverName, "")
	ctx := context.Background()
	log := &eventLog{}
	s := mustStream(t, WithResumeKey(Asc("k")), WithObserver(log))
	_, err := db.QueryContext(ctx, "SELECT g FROM generate_series(1, 3) g ORDER BY g", s)
	require.ErrorIs(t, err, ErrResumeQuery)
	assert.Zero(t, log.count(EventStarted)+log.count(EventEnded), "events of a Query that failed")
	assert.Equal(t, NotStarted, s.State())
	rows, err := db.QueryContext(ctx, "SELECT g AS k FROM generate_series(1, 3) g ORDER BY g", s)
	require.NoError(t, err, "the Stream was used up")
	n := 0
	for rows.Next() {
		n++
	}
	require.NoError(t, rows.Err())
	require.NoError(t, rows.Close())
	assert.Equal(t, 3, n)
	assert.Equal(t, 1, log.count(EventStarted))
	assert.Equal(t, 1, log.count(EventEnded))
}

// TestResumeReleasesAfterPause: a resumable stream paused longer than
// WithResumeAfterPause ends its server-side query while it stays Paused:
// the backend goes idle and lets its snapshot go (backend_xmin is NULL),
// so VACUUM removes the rows updated meanwhile; on Resume the stream
// continues from its key with every row once, in order, in every mode.
// A Resume before the threshold keeps the query; a Cancel while the query
// is released ends the stream with ErrCanceled.
func TestResumeReleasesAfterPause(t *testing.T) {
	monitor := openPG(t, "postgres", "")
	ctx := context.Background()
	const n = 20_000
	_, err := monitor.Exec(`DROP TABLE IF EXISTS resume_vac;
		CREATE TABLE resume_vac (g int PRIMARY KEY, pad text NOT NULL) WITH (autovacuum_enabled = off);
		INSERT INTO resume_vac SELECT g, repeat('x', 100) FROM generate_series(1, ` + fmt.Sprint(n) + `) g`)
	require.NoError(t, err)
	_, err = monitor.Exec("VACUUM ANALYZE resume_vac")
	require.NoError(t, err)
	const query = "SELECT g, pad FROM resume_vac ORDER BY g"
	openCtx := func(t *testing.T, ctx context.Context, mode string, opts ...Option) (*Stream, *sql.Rows, int, *eventLog) {
		db := openPG(t, DriverName, mode)
		db.SetMaxOpenConns(1)
		var pid int
		require.NoError(t, db.QueryRow("SELECT pg_backend_pid()").Scan(&pid))
		log := &eventLog{}
		s := mustStream(t, append([]Option{WithResumeKey(Asc("g")), WithObserver(log)}, opts...)...)
		rows, err := db.QueryContext(ctx, query, s)
		require.NoError(t, err)
		return s, rows, pid, log
	}
	open := func(t *testing.T, mode string, opts ...Option) (*Stream, *sql.Rows, int, *eventLog) {
		return openCtx(t, ctx, mode, opts...)
	}
	for _, mode := range []string{"", "jsonstream_mode=single", "jsonstream_fetch_size=auto"} {
		t.Run("mode="+mode, func(t *testing.T) {
			s, rows, pid, log := open(t, mode, WithResumeAfterPause(100*time.Millisecond))
			var got checksum
			var g int64
			var pad string
			for got.count < 1000 && rows.Next() {
				require.NoError(t, rows.Scan(&g, &pad))
				got.add(g)
			}
			require.NoError(t, s.Pause())
			// The backend lets its query go: idle, without a snapshot, or
			// gone (a single statement's connection is cut: its server
			// may have sent the whole result into the socket's buffers and
			// gone idle before).
			require.Eventually(t, func() bool {
				var state sql.NullString
				var xmin sql.NullString
				err := monitor.QueryRow("SELECT state, backend_xmin::text FROM pg_stat_activity WHERE pid = $1", pid).Scan(&state, &xmin)
				if mode == "jsonstream_mode=single" {
					return errors.Is(err, sql.ErrNoRows)
				}
				return err == nil && state.String == "idle" && !xmin.Valid
			}, 10*time.Second, 5*time.Millisecond, "the paused stream's backend kept its query")
			assert.Equal(t, Paused, s.State())
			_, err := monitor.Exec("UPDATE resume_vac SET pad = repeat('y', 100) WHERE g <= 1000")
			require.NoError(t, err)
			require.Zero(t, vacuumDead(t, monitor, "resume_vac", 10*time.Second), "VACUUM left dead rows behind the paused stream")
			require.NoError(t, s.Resume())
			for rows.Next() {
				require.NoError(t, rows.Scan(&g, &pad))
				got.add(g)
			}
			require.NoError(t, rows.Err())
			require.NoError(t, rows.Close())
			assert.Equal(t, wantChecksum(n), got)
			assert.Equal(t, int64(1), s.Stats().Resumes)
			require.Equal(t, 1, log.count(EventContinued))
			assert.ErrorIs(t, log.continued[0].Err, ErrPauseReleased)
			assert.Equal(t, log.count(EventPaused), log.count(EventResumed), "every pause ended")
			assert.Equal(t, 1, log.count(EventEnded))
		})
	}
	t.Run("resumed before", func(t *testing.T) {
		s, rows, _, _ := open(t, "", WithResumeAfterPause(time.Hour))
		require.True(t, rows.Next())
		require.NoError(t, s.Pause())
		require.NoError(t, s.Resume())
		n := 1
		for rows.Next() {
			n++
		}
		require.NoError(t, rows.Err())
		assert.Equal(t, 20_000, n)
		assert.Zero(t, s.Stats().Resumes)
		require.NoError(t, rows.Close())
	})
	// releasedIn pauses a stream of ctx in mode after a row until its
	// query was let go: its backend idle, or gone with the cut connection
	// of a single statement.
	releasedIn := func(t *testing.T, ctx context.Context, mode string, opts ...Option) (*Stream, *sql.Rows, *eventLog) {
		s, rows, pid, log := openCtx(t, ctx, mode, append([]Option{WithResumeAfterPause(50 * time.Millisecond)}, opts...)...)
		require.True(t, rows.Next())
		require.NoError(t, s.Pause())
		require.Eventually(t, func() bool {
			var state string
			err := monitor.QueryRow("SELECT state FROM pg_stat_activity WHERE pid = $1", pid).Scan(&state)
			if mode == singleDSN {
				return errors.Is(err, sql.ErrNoRows)
			}
			require.NoError(t, err)
			return state == "idle"
		}, 10*time.Second, 5*time.Millisecond)
		return s, rows, log
	}
	released := func(t *testing.T) (*Stream, *sql.Rows, *eventLog) {
		return releasedIn(t, context.Background(), "")
	}
	// A Cancel while the query is released ends the stream at once, as it
	// ends a pause: Failed from then on, controls refused, no resume, and
	// the end tells of the Cancel, read or closed.
	for _, read := range []bool{true, false} {
		t.Run(fmt.Sprintf("canceled while released/read=%v", read), func(t *testing.T) {
			s, rows, log := released(t)
			require.NoError(t, s.Cancel())
			assert.Equal(t, Failed, s.State())
			assert.Equal(t, Failed, s.Stats().State)
			assert.ErrorIs(t, s.Resume(), ErrStreamEnded)
			assert.ErrorIs(t, s.Pause(), ErrStreamEnded)
			assert.ErrorIs(t, s.Cancel(), ErrStreamEnded)
			if read {
				assert.False(t, rows.Next())
				require.ErrorIs(t, rows.Err(), ErrCanceled)
			}
			require.NoError(t, rows.Close())
			assert.Equal(t, Failed, s.State())
			assert.Equal(t, 1, log.count(EventPaused))
			assert.Zero(t, log.count(EventResumed), "a canceled pause resumed")
			require.Len(t, log.ended, 1)
			assert.Equal(t, OutcomeCanceled, log.ended[0].Outcome)
			assert.ErrorIs(t, log.ended[0].Err, ErrCanceled)
		})
	}
	// The pause timeout of a released pause acts from its own goroutine,
	// as a pause's does: with no Next meanwhile, the stream is Failed at
	// the timeout, the Observer hears of it, and a later Resume finds it
	// ended; or, under ResumeOnPauseTimeout, it is Running again and goes
	// on from its key.
	t.Run("pause timeout while released", func(t *testing.T) {
		s, rows, log := releasedIn(t, context.Background(), "", WithPauseTimeout(2*time.Second))
		st := s.Stats()
		require.Equal(t, Paused, st.State, "the pause timed out before its release")
		assert.Positive(t, st.PausedNow, "a held pause shows no PausedNow")
		assert.GreaterOrEqual(t, st.PausedTotal, st.PausedNow)
		require.Eventually(t, func() bool { return s.State() == Failed }, 10*time.Second, 5*time.Millisecond)
		st = s.Stats()
		assert.Equal(t, int64(1), st.PauseTimeouts)
		assert.Zero(t, st.PausedNow)
		assert.Equal(t, 1, log.count(EventPauseTimeout))
		assert.ErrorIs(t, s.Resume(), ErrStreamEnded)
		assert.False(t, rows.Next())
		require.ErrorIs(t, rows.Err(), ErrPauseTimeout)
		require.NoError(t, rows.Close())
		assert.Zero(t, log.count(EventResumed))
		assert.Zero(t, log.count(EventContinued))
		require.Len(t, log.ended, 1)
		assert.Equal(t, OutcomePauseTimeout, log.ended[0].Outcome)
	})
	t.Run("pause timeout resumes while released", func(t *testing.T) {
		s, rows, log := releasedIn(t, context.Background(), "",
			WithPauseTimeout(2*time.Second), WithPauseTimeoutAction(ResumeOnPauseTimeout))
		require.Equal(t, Paused, s.State(), "the pause timed out before its release")
		require.Eventually(t, func() bool { return s.State() == Running }, 10*time.Second, 5*time.Millisecond)
		assert.Equal(t, int64(1), s.Stats().PauseTimeouts)
		assert.Equal(t, 1, log.count(EventPauseTimeout))
		n := 1
		for rows.Next() {
			n++
		}
		require.NoError(t, rows.Err())
		require.NoError(t, rows.Close())
		assert.Equal(t, 20_000, n, "not every row once")
		assert.Equal(t, 1, log.count(EventContinued))
		assert.Equal(t, log.count(EventPaused), log.count(EventResumed), "the pause did not end")
	})
	// Closed while released, the stream was closed early: its query was
	// let go as an early close in its mode lets it go.
	for _, c := range []struct {
		mode string
		want Outcome
	}{{"", OutcomePortalClosed}, {singleDSN, OutcomeCut}, {"jsonstream_fetch_size=auto", OutcomeCursorClosed}} {
		t.Run("closed while released/mode="+c.mode, func(t *testing.T) {
			s, rows, log := releasedIn(t, context.Background(), c.mode)
			assert.Equal(t, Paused, s.State())
			st := s.Stats()
			assert.Equal(t, Paused, st.State)
			assert.Positive(t, st.PausedNow, "a held pause shows no PausedNow")
			require.NoError(t, rows.Close())
			assert.Equal(t, Closed, s.State())
			assert.Equal(t, Closed, s.Stats().State)
			require.Len(t, log.ended, 1)
			e := log.ended[0]
			assert.Equal(t, c.want, e.Outcome)
			assert.NoError(t, e.Err)
			assert.Equal(t, Closed, e.Stats.State)
			assert.Equal(t, c.want == OutcomeCut, e.ConnCut)
			assert.Zero(t, log.count(EventContinued))
		})
	}
	t.Run("context ended while released", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		s, rows, log := releasedIn(t, ctx, "")
		cancel() // database/sql closes the rows
		require.Eventually(t, func() bool { return log.count(EventEnded) == 1 }, 10*time.Second, 5*time.Millisecond)
		require.NoError(t, rows.Close())
		log.mu.Lock()
		defer log.mu.Unlock()
		assert.Equal(t, OutcomeContext, log.ended[0].Outcome)
		assert.ErrorIs(t, log.ended[0].Err, context.Canceled)
		assert.NotEqual(t, Paused, s.State())
	})
	t.Run("without a key", func(t *testing.T) {
		db := openPG(t, DriverName, "")
		_, err := db.QueryContext(ctx, query, mustStream(t, WithResumeAfterPause(time.Second)))
		require.ErrorIs(t, err, ErrResumeQuery)
		_, err = NewStream(WithResumeAfterPause(-1))
		require.ErrorIs(t, err, ErrInvalidOption)
	})
}

// TestResumePausedAMinute: a stream paused for a minute past its
// WithResumeAfterPause threshold, on a table of 1,000,000 rows, holds
// back no VACUUM at any point of the pause (rows updated at its start,
// in its middle and at its end are all removed: n_dead_tup is 0 after
// each VACUUM), and after Resume it completes with every key once, in
// order. The same pause without the threshold leaves the updated rows
// dead, so the check can fail.
func TestResumePausedAMinute(t *testing.T) {
	if testing.Short() {
		t.Skip("pauses for a minute")
	}
	monitor := openPG(t, "postgres", "")
	const n = 1_000_000
	_, err := monitor.Exec(`DROP TABLE IF EXISTS resume_minute;
		CREATE TABLE resume_minute (g int PRIMARY KEY, pad text NOT NULL) WITH (autovacuum_enabled = off);
		INSERT INTO resume_minute SELECT g, repeat('x', 100) FROM generate_series(1, ` + fmt.Sprint(n) + `) g`)
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = monitor.Exec("DROP TABLE IF EXISTS resume_minute") })
	_, err = monitor.Exec("VACUUM ANALYZE resume_minute")
	require.NoError(t, err)
	// updateAndVacuum updates 1,000 rows ahead of the stream and returns
	// the dead rows VACUUM left, trying for up to within (vacuumDead).
	batch := 0
	updateAndVacuum := func(within time.Duration) int64 {
		batch++
		_, err := monitor.Exec("UPDATE resume_minute SET pad = repeat('y', 100) WHERE g > $1 AND g <= $1 + 1000", 100_000*batch)
		require.NoError(t, err)
		// A snapshot held back would keep all 1,000 through every try.
		return vacuumDead(t, monitor, "resume_minute", within)
	}
	open := func(opts ...Option) (*Stream, *sql.Rows, *eventLog) {
		db := openPG(t, DriverName, "")
		log := &eventLog{}
		s := mustStream(t, append([]Option{WithResumeKey(Asc("g")), WithObserver(log)}, opts...)...)
		rows, err := db.Query("SELECT g, pad FROM resume_minute ORDER BY g", s)
		require.NoError(t, err)
		return s, rows, log
	}
	read := func(rows *sql.Rows, got *checksum, k int64) {
		var g int64
		var pad string
		for got.count < k && rows.Next() {
			require.NoError(t, rows.Scan(&g, &pad))
			got.add(g)
		}
	}

	t.Run("without the threshold", func(t *testing.T) {
		s, rows, _ := open()
		var got checksum
		read(rows, &got, 1000)
		require.NoError(t, s.Pause())
		time.Sleep(2 * time.Second)
		assert.EqualValues(t, 1000, updateAndVacuum(0), "the paused query's snapshot keeps the updated rows")
		require.NoError(t, s.Resume())
		require.NoError(t, rows.Close())
		_, err := monitor.Exec("VACUUM resume_minute")
		require.NoError(t, err)
	})

	const threshold = time.Second
	s, rows, log := open(WithResumeAfterPause(threshold))
	var got checksum
	read(rows, &got, 1000)
	require.NoError(t, s.Pause())
	paused := time.Now()
	for _, at := range []time.Duration{threshold + time.Second, threshold + 30*time.Second, threshold + time.Minute} {
		time.Sleep(time.Until(paused.Add(at)))
		assert.Zero(t, updateAndVacuum(10*time.Second), "dead rows after a VACUUM %v into the pause", at)
		assert.Equal(t, Paused, s.State())
	}
	require.NoError(t, s.Resume())
	t.Logf("paused %v", time.Since(paused).Round(time.Millisecond))
	read(rows, &got, n+1)
	require.NoError(t, rows.Err())
	require.NoError(t, rows.Close())
	assert.Equal(t, wantChecksum(n), got, "every key once, in order")
	assert.Equal(t, int64(1), s.Stats().Resumes)
	require.Equal(t, 1, log.count(EventContinued))
	assert.ErrorIs(t, log.continued[0].Err, ErrPauseReleased)
}

// vacuumDead runs VACUUM on table and returns the dead rows it left,
// trying again for up to within while any are left. A snapshot the test
// does not own (an autovacuum worker analyzing another table holds one
// for a moment) can keep rows dead through one VACUUM; a paused stream's
// keeps them through every try. Rows left dead are logged with the
// backends that held a snapshot then.
func vacuumDead(t *testing.T, monitor *sql.DB, table string, within time.Duration) int64 {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		_, err := monitor.Exec("VACUUM " + table)
		require.NoError(t, err)
		var dead int64
		// The statistics of the VACUUM reach the view at once.
		require.NoError(t, monitor.QueryRow("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = $1", table).Scan(&dead))
		if dead == 0 || !time.Now().Before(deadline) {
			if dead > 0 {
				logSnapshotHolders(t, monitor)
			}
			return dead
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logSnapshotHolders logs the backends other than monitor's that hold a
// snapshot (backend_xmin).
func logSnapshotHolders(t *testing.T, monitor *sql.DB) {
	t.Helper()
	rows, err := monitor.Query(`SELECT pid, backend_type, coalesce(state, ''), backend_xmin::text, left(query, 80)
		FROM pg_stat_activity WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid()`)
	require.NoError(t, err)
	defer rows.Close()
	for rows.Next() {
		var pid int
		var typ, state, xmin, query string
		require.NoError(t, rows.Scan(&pid, &typ, &state, &xmin, &query))
		t.Logf("snapshot held by pid %d (%s, %s, xmin %s): %s", pid, typ, state, xmin, query)
	}
	require.NoError(t, rows.Err())
}
