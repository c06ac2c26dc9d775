package jsonstream

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream/internal/pgtest"
)

// stressFailure is a failure TestResumeUnderRandomFailures causes.
type stressFailure int

const (
	failTerminate stressFailure = iota // pg_terminate_backend of the stream's session
	failRestart                        // a restart (fast shutdown) of the stream's server
	failConflict                       // on the standby: a recovery conflict over a lock
)

func (f stressFailure) String() string {
	return [...]string{"terminate", "restart", "conflict"}[f]
}

// TestResumeUnderRandomFailures: 50 resumable streams, 5 at a time, in
// the three modes, half on a primary and half on its hot standby. Each
// causes failures at random rows until it has continued 4 times: its
// session terminated, its server restarted (which ends the sessions of
// the other streams there too), or, on the standby, a recovery conflict
// (a row updated and vacuumed on the primary: the standby cancels the
// queries whose snapshot could see it max_standby_streaming_delay after
// the removal reached it). Every stream delivers its keys exactly
// once, in order; there are at least 200 continuations in all; once the
// pools are closed no session of the streams is left on either server
// (the connections continuations opened included); the goroutine check
// of TestMain runs after it.
func TestResumeUnderRandomFailures(t *testing.T) {
	primary, standby := pgtest.StandbyPair(t, pgtest.StandbyOptions{Settings: map[string]string{
		"max_standby_streaming_delay": "100ms",
		"hot_standby_feedback":        "off",
		// After a restart of the primary the standby reconnects within
		// 100 ms instead of the default 5 s, during which a conflict
		// caused on the primary would not reach it.
		"wal_retrieve_retry_interval": "100ms",
	}})
	// Rows of 4 KB. A failure reaches a portal or cursor stream within
	// its window or batch, but a single statement's only after what the
	// server's socket buffers hold, up to 4 MB on loopback: 1,000 rows.
	// Its streams are longer, so that 4 failures fit, with room after
	// the last (tail) for what was sent before it.
	const streams, perStream, workers = 50, 4, 5
	const n, tail, singleN, singleTail = 5_000, 1_000, 10_000, 2_500
	// The standby's streams read a database of their own, so that the
	// primary's streams, whose snapshots hold back VACUUM in theirs, do
	// not keep the VACUUM that makes a conflict from removing rows.
	_, err := openDSN(t, "postgres", primary.DSN()).Exec(`CREATE DATABASE jsonstream_standby`)
	require.NoError(t, err)
	dsns := []string{primary.DSN(), standby.DSN() + " dbname=jsonstream_standby"}
	for _, dsn := range []string{primary.DSN(), primary.DSN() + " dbname=jsonstream_standby"} {
		_, err := openDSN(t, "postgres", dsn).Exec(fmt.Sprintf(`CREATE TABLE jsonstream_test_rows (g int PRIMARY KEY, pad text NOT NULL);
			INSERT INTO jsonstream_test_rows SELECT g, repeat('x', 100) FROM generate_series(1, %d) g;
			CREATE TABLE jsonstream_conflict (id int PRIMARY KEY, v int NOT NULL);
			INSERT INTO jsonstream_conflict VALUES (1, 0)`, streams*singleN))
		require.NoError(t, err)
	}
	waitReplay(t, standby, time.Minute)
	servers := []*pgtest.Server{primary, standby}
	// A restart takes its server's write lock; what runs SQL on a server
	// to cause a failure takes the read lock, so that it never meets a
	// restart halfway.
	var serverMu [2]sync.RWMutex
	// One conflict at a time: an UPDATE running while another stream's
	// VACUUM runs would keep the row version that VACUUM is to remove.
	var conflictMu sync.Mutex
	modes := []Option{WithStreamMode(ModePortal), WithStreamMode(ModeSingle), WithFetchSize(FetchAuto)} // mode 1 is the single statement
	var caused, missed [3]atomic.Int64
	var resumes, startRetries atomic.Int64

	// cause causes f for the stream app on server on and reports whether
	// it did (a terminate finds no session while the stream is between
	// sessions).
	cause := func(f stressFailure, on int, app string) (bool, error) {
		if f == failRestart {
			serverMu[on].Lock()
			defer serverMu[on].Unlock()
			return true, servers[on].Restart()
		}
		target, dsn := on, dsns[on]
		if f == failConflict {
			// A row updated and vacuumed on the primary: replaying the
			// removal conflicts with every standby query whose snapshot
			// could see the row.
			target, dsn = 0, primary.DSN()+" dbname=jsonstream_standby"
		}
		serverMu[target].RLock()
		defer serverMu[target].RUnlock()
		// A pool of its own: one from before a restart would hold dead
		// connections.
		db, err := sql.Open("postgres", dsn)
		if err != nil {
			return false, err
		}
		defer db.Close()
		if f == failConflict {
			conflictMu.Lock()
			defer conflictMu.Unlock()
			if _, err := db.Exec(`UPDATE jsonstream_conflict SET v = v + 1`); err != nil {
				return false, err
			}
			if _, err := db.Exec(`VACUUM jsonstream_conflict`); err != nil {
				return false, err
			}
			var lsn string
			if err := db.QueryRow(`SELECT pg_current_wal_insert_lsn()::text`).Scan(&lsn); err != nil {
				return false, err
			}
			// The removal has caused a conflict once the standby has
			// received it; replay then cancels the stream's query
			// max_standby_streaming_delay later (a standby restart
			// running meanwhile ends the stream anyway).
			return received(standby, lsn, 10*time.Second), nil
		}
		var ended int
		err = db.QueryRow(`SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1`, app).Scan(&ended)
		var pe *pq.Error
		if errors.As(err, &pe) && pe.Code == "40001" {
			// On the standby, another stream's conflict canceled this
			// query too: no session was ended.
			return false, nil
		}
		return ended > 0, err
	}

	run := func(i int, rnd *rand.Rand) error {
		on := i % 2
		app := fmt.Sprintf("resume_stress_%d", i)
		mode := (i / 2) % len(modes)
		name := fmt.Sprintf("stream %d (%s, mode %d)", i, []string{"primary", "standby"}[on], mode)
		db, err := sql.Open(DriverName, dsns[on]+" application_name="+app)
		if err != nil {
			return err
		}
		defer db.Close()
		s, err := NewStream(WithResumeKey(Asc("g")), modes[mode])
		if err != nil {
			return err
		}
		n, tail := int64(n), int64(tail)
		if mode == 1 {
			n, tail = singleN, singleTail
		}
		from := int64(i) * singleN
		const query = "SELECT g, repeat(pad, 40) FROM jsonstream_test_rows WHERE g > $1 AND g <= $2 ORDER BY g"
		rows, err := db.Query(query, from, from+n, s)
		// A start that meets another stream's restart fails, as it would
		// without a key: what resumes is a stream that has started.
		for attempt := 0; err != nil && retryable(err) && attempt < 200; attempt++ {
			startRetries.Add(1)
			time.Sleep(50 * time.Millisecond)
			rows, err = db.Query(query, from, from+n, s)
		}
		if err != nil {
			return fmt.Errorf("%s: query: %w", name, err)
		}
		defer rows.Close()
		var trace []string
		var got, want checksum
		for k := from + 1; k <= from+n; k++ {
			want.add(k)
		}
		// A failure is pending from the row it was caused at until the
		// stream continues; one that has not reached the stream within
		// tail rows never will (the result had been sent), and another is
		// caused.
		nextAt, pendingAt, before, slowUntil := 1+rnd.Int64N(300), int64(0), int64(0), int64(0)
		var pending stressFailure
		for rows.Next() {
			var g int64
			var pad string
			if err := rows.Scan(&g, &pad); err != nil {
				return fmt.Errorf("%s: scan: %w", name, err)
			}
			got.add(g)
			if got.count < slowUntil {
				time.Sleep(time.Millisecond)
			}
			resumed := s.Stats().Resumes
			if resumed >= perStream || got.count > n-tail {
				continue
			}
			if pendingAt > 0 && resumed == before && got.count-pendingAt > tail {
				missed[pending].Add(1)
			}
			if pendingAt > 0 && (resumed > before || got.count-pendingAt > tail) {
				pendingAt, nextAt, slowUntil = 0, got.count+50+rnd.Int64N(250), 0
			}
			if pendingAt > 0 || got.count < nextAt {
				continue
			}
			f := failTerminate
			switch r := rnd.IntN(20); {
			case r < 2:
				f = failRestart
			case r < 5 && on == 1:
				f = failConflict
			}
			before = resumed
			ok, err := cause(f, on, app)
			trace = append(trace, fmt.Sprintf("%d:%v:%v:%d", got.count, f, ok, resumed))
			if err != nil {
				return fmt.Errorf("%s: %v: %w", name, f, err)
			}
			if ok {
				caused[f].Add(1)
				pendingAt, pending = got.count, f
				if f == failConflict {
					// The standby cancels the query
					// max_standby_streaming_delay after the removal
					// reached it, and replay may first wait for other
					// streams' conflicts; read at full speed, the stream
					// would be over by then, and paused, a single
					// statement's backend blocked writing could not act
					// on it. So the stream reads slowly while the
					// conflict is pending.
					slowUntil = got.count + tail
				}
			} else {
				nextAt = got.count + 20
			}
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if got != want {
			return fmt.Errorf("%s: checksum %+v, want %+v", name, got, want)
		}
		resumed := s.Stats().Resumes
		resumes.Add(resumed)
		if resumed < perStream {
			return fmt.Errorf("%s: %d continuations, want at least %d %v", name, resumed, perStream, trace)
		}
		return rows.Close()
	}

	errs := make(chan error, streams)
	next := make(chan int, streams)
	for i := range streams {
		next <- i
	}
	close(next)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		// Worker: runs streams until none is left.
		go func(seed uint64) {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(seed, uint64(time.Now().UnixNano())))
			for i := range next {
				if err := run(i, rnd); err != nil {
					errs <- err
				}
			}
		}(uint64(w))
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d streams, %d continuations; caused %d terminations, %d restarts, %d conflicts, of which %d, %d, %d did not reach their stream in time; %d starts again",
		streams, resumes.Load(), caused[failTerminate].Load(), caused[failRestart].Load(), caused[failConflict].Load(),
		missed[failTerminate].Load(), missed[failRestart].Load(), missed[failConflict].Load(), startRetries.Load())
	assert.GreaterOrEqual(t, resumes.Load(), int64(streams*perStream), "continuations")
	for _, f := range []stressFailure{failTerminate, failRestart, failConflict} {
		assert.Positive(t, caused[f].Load(), "%v failures caused", f)
	}
	for on, dsn := range dsns {
		db := openDSN(t, "postgres", dsn)
		require.Eventually(t, func() bool {
			var left int
			require.NoError(t, db.QueryRowContext(context.Background(),
				`SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'resume\_stress\_%'`).Scan(&left))
			return left == 0
		}, 10*time.Second, 10*time.Millisecond, "sessions of the streams left on the %s", []string{"primary", "standby"}[on])
	}
}

// received reports whether the standby has received its primary's WAL up
// to lsn within limit; its errors (a restart running) count as not yet.
func received(standby *pgtest.Server, lsn string, limit time.Duration) bool {
	db, err := sql.Open("postgres", standby.DSN())
	if err != nil {
		return false
	}
	defer db.Close()
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var ok sql.NullBool
		if db.QueryRow(`SELECT pg_last_wal_receive_lsn() >= $1::pg_lsn`, lsn).Scan(&ok) == nil && ok.Bool {
			return true
		}
	}
	return false
}
