package jsonstream

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream/internal/pgtest"
)

// standbyDelay is the standby's max_standby_streaming_delay: how long
// replay waits for a query in its way before it cancels the query.
const standbyDelay = 2 * time.Second

// standbyMargin is how much longer than standbyDelay a conflict may take
// to resolve: the cancel's delivery, replay of the rest, and our polling,
// on a loaded machine.
const standbyMargin = time.Second

// TestPausedStreamOnStandby measures what a paused stream on a hot
// standby does to WAL replay when the primary removes row versions the
// stream's snapshot still sees (an UPDATE, then VACUUM): replay must
// cancel the stream's query, a recovery conflict. A portal stream's
// backend waits for the next Execute, reading, where the cancel ends its
// session at once: replay is held for max_standby_streaming_delay and no
// longer, and the resumed stream fails with the server's FATAL. A single
// statement's backend is blocked writing, where PostgreSQL acts on the
// cancel only once the socket takes more of its output: replay may be
// held until the client reads again, so only that it then goes on and
// that the stream does not end silently are asserted.
func TestPausedStreamOnStandby(t *testing.T) {
	begin := time.Now()
	primary, standby := pgtest.StandbyPair(t, pgtest.StandbyOptions{Settings: map[string]string{
		"max_standby_streaming_delay": fmt.Sprintf("%dms", standbyDelay.Milliseconds()),
		"hot_standby_feedback":        "off", // feedback would keep the rows on the primary: no conflict
	}})
	// Enough rows that a paused single statement fills the socket buffers,
	// about 4MB on Linux over loopback, several times over; resumeN for
	// the resume subtests' checksums.
	n := resumeN
	watch := standbyDelay + 3*time.Second // how long single mode's hold is watched
	if testing.Short() {
		n, watch = 100_000, standbyDelay+standbyMargin
	}
	pdb := openDSN(t, "postgres", primary.DSN())
	// bigQuery's table, on this primary. VACUUM now, so that the one after
	// the UPDATE has only the updated pages to prune.
	_, err := pdb.Exec(`CREATE TABLE jsonstream_test_rows (g int PRIMARY KEY, pad text NOT NULL);
		INSERT INTO jsonstream_test_rows SELECT g, repeat('x', 100) FROM generate_series(1, ` + fmt.Sprint(n) + `) g`)
	require.NoError(t, err)
	_, err = pdb.Exec(`VACUUM ANALYZE jsonstream_test_rows`)
	require.NoError(t, err)
	waitReplay(t, standby, 30*time.Second)
	t.Logf("primary, standby and %d rows ready in %v", n, time.Since(begin).Round(time.Millisecond))

	t.Run("mode=portal", func(t *testing.T) {
		c := pauseOnStandby(t, pdb, standby, "", n)
		// In ClientRead, the backend acts on the cancel at once.
		replayed, gone, err := watchReplay(c.monitor, c.lsn, c.pid, standbyDelay+standbyMargin+5*time.Second)
		require.NoError(t, err)
		require.False(t, gone.IsZero(), "backend %d outlived the recovery conflict", c.pid)
		require.False(t, replayed.IsZero(), "the standby did not replay the VACUUM")
		ended, held := gone.Sub(c.vacuumed), replayed.Sub(c.vacuumed)
		err = c.resume(t)
		t.Logf("standby mode=portal: replay held %v after VACUUM (max_standby_streaming_delay %v); paused backend ended after %v; resumed stream after %d rows: %v",
			held.Round(time.Millisecond), standbyDelay, ended.Round(time.Millisecond), c.read, err)
		assert.Less(t, ended, standbyDelay+standbyMargin, "the conflict should end the paused backend")
		assert.Less(t, held, standbyDelay+standbyMargin, "a paused portal stream should not hold replay")

		// Waiting for a command, the backend cannot fail just the
		// statement: PostgreSQL ends the session with a FATAL 40001.
		var pe *pq.Error
		require.ErrorAs(t, err, &pe, "the server's error, never a silent end")
		assert.Equal(t, "40001", string(pe.Code))
		assert.Contains(t, pe.Message, "conflict with recovery")
		var sessionEnded *SessionEndedError
		assert.ErrorAs(t, err, &sessionEnded)
		c.requirePoolServes(t)
	})

	// With a resume key the stream gets past the conflict: the same
	// replay, then every row once, in order, after Resume.
	t.Run("mode=portal/resume key", func(t *testing.T) {
		c := pauseOnStandby(t, pdb, standby, "", n, WithResumeKey(Asc("g")))
		replayed, gone, err := watchReplay(c.monitor, c.lsn, c.pid, standbyDelay+standbyMargin+5*time.Second)
		require.NoError(t, err)
		require.False(t, gone.IsZero(), "backend %d outlived the recovery conflict", c.pid)
		require.False(t, replayed.IsZero(), "the standby did not replay the VACUUM")
		c.requireContinued(t, "portal with a resume key", replayed, n)
	})

	// A single statement blocked writing holds replay (below), unless the
	// pause lets its query go: with WithResumeAfterPause its connection is
	// cut 1 s into the pause, and it continues from its key on Resume.
	t.Run("mode=single/released after a pause", func(t *testing.T) {
		c := pauseOnStandby(t, pdb, standby, singleDSN, n, WithResumeKey(Asc("g")), WithResumeAfterPause(time.Second))
		replayed, _, err := watchReplay(c.monitor, c.lsn, 0, standbyDelay+standbyMargin+5*time.Second)
		require.NoError(t, err)
		require.False(t, replayed.IsZero(), "the standby did not replay the VACUUM")
		c.requireContinued(t, "single released after 1s of pause", replayed, n)
	})

	t.Run("mode=single", func(t *testing.T) {
		c := pauseOnStandby(t, pdb, standby, singleDSN, n)
		// Blocked writing, the backend acts on the cancel only once the
		// socket takes some of its output: replay is held through the
		// pause, or released meanwhile, as the kernel's buffers go.
		replayed, _, err := watchReplay(c.monitor, c.lsn, 0, watch)
		require.NoError(t, err)
		state, waitEvent, _ := activity(t, c.monitor, c.pid)
		lag, err := standby.ReplayLag(context.Background())
		require.NoError(t, err)

		// Replay goes on once the backend can act on the cancel.
		resumed := time.Now()
		type watched struct {
			replayed time.Time
			err      error
		}
		after := make(chan watched, 1)
		go func() {
			replayed, _, err := watchReplay(c.monitor, c.lsn, 0, 10*time.Second)
			after <- watched{replayed, err}
		}()
		err = c.resume(t)
		w := <-after
		require.NoError(t, w.err)
		require.False(t, w.replayed.IsZero(), "the standby did not replay the VACUUM after Resume")
		replay := fmt.Sprintf("held %v after VACUUM, released while paused", replayed.Sub(c.vacuumed).Round(time.Millisecond))
		if replayed.IsZero() {
			replay = fmt.Sprintf("held through the %v pause (%d bytes of WAL behind), released %v after Resume",
				watch, lag, w.replayed.Sub(resumed).Round(time.Millisecond))
		}
		t.Logf("standby mode=single: replay %s (max_standby_streaming_delay %v); paused backend %s in %s; resumed stream after %d rows: %v",
			replay, standbyDelay, state, waitEvent, c.read, err)

		// Never silent: every row, or the server's error.
		if err == nil {
			assert.Equal(t, n, c.read, "the stream ended early without an error")
		} else {
			var pe *pq.Error
			assert.ErrorAs(t, err, &pe, "the server's error")
		}
		c.requirePoolServes(t)
	})
}

// pausedOnStandby is a stream on the standby, paused past a recovery
// conflict that the primary provoked.
type pausedOnStandby struct {
	db       *sql.DB
	monitor  *sql.DB
	conn     *sql.Conn
	pid      int
	rows     *sql.Rows
	stream   *Stream
	readRows func(int)
	next     func() int
	read     int       // rows read in all, once resume returns
	vacuumed time.Time // when the primary's VACUUM returned
	lsn      string    // the primary's WAL insert position then
}

// pauseOnStandby streams bigQuery's n rows from the standby through
// jsonstream with the DSN fragment mode, pauses after 1000 rows once the
// backend waits on the client, and has the primary update rows the
// stream's snapshot sees and VACUUM them away.
func pauseOnStandby(t *testing.T, pdb *sql.DB, standby *pgtest.Server, mode string, n int, opts ...Option) *pausedOnStandby {
	t.Helper()
	c := &pausedOnStandby{
		db:      openDSN(t, DriverName, standby.DSN()+" "+mode),
		monitor: openDSN(t, "postgres", standby.DSN()),
		stream:  mustStream(t, opts...),
	}
	var err error
	c.conn, err = c.db.Conn(context.Background())
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.conn.Close() })
	c.pid = pidOf(t, c.conn)
	c.rows, err = c.conn.QueryContext(context.Background(), bigQuery, n, c.stream)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.rows.Close() })
	c.readRows, c.next = inOrder(t, c.rows)
	c.readRows(1000)
	require.NoError(t, c.stream.Pause())
	want := "ClientRead" // its Executes done, the portal's backend waits for the next
	if mode == singleDSN {
		want = "ClientWrite" // the socket buffers full
	}
	require.Eventually(t, func() bool {
		state, we, _ := activity(t, c.monitor, c.pid)
		return state == "active" && we == want
	}, 10*time.Second, 10*time.Millisecond, "the paused backend should wait in %s", want)

	_, err = pdb.Exec(`UPDATE jsonstream_test_rows SET pad = repeat('y', 100) WHERE g <= 1000`)
	require.NoError(t, err)
	_, err = pdb.Exec(`VACUUM jsonstream_test_rows`)
	require.NoError(t, err)
	c.vacuumed = time.Now()
	require.NoError(t, pdb.QueryRow(`SELECT pg_current_wal_insert_lsn()::text`).Scan(&c.lsn))
	return c
}

// requireContinued resumes a resumable stream whose replay went on at
// replayed, and requires that replay was not held past the standby's
// delay and that the stream then delivered its n rows, in order, after one
// continuation.
func (c *pausedOnStandby) requireContinued(t *testing.T, what string, replayed time.Time, n int) {
	t.Helper()
	held := replayed.Sub(c.vacuumed)
	err := c.resume(t)
	t.Logf("standby mode=%s: replay held %v after VACUUM; %d rows, %d continuations: %v",
		what, held.Round(time.Millisecond), c.read, c.stream.Stats().Resumes, err)
	assert.Less(t, held, standbyDelay+standbyMargin, "the paused stream should not hold replay")
	require.NoError(t, err)
	assert.Equal(t, n, c.read, "every row, in order (inOrder), once")
	assert.Equal(t, int64(1), c.stream.Stats().Resumes)
	c.requirePoolServes(t)
}

// resume resumes the stream, reads it to its end and returns its error.
// The rows it reads must be bigQuery's, in order.
func (c *pausedOnStandby) resume(t *testing.T) error {
	t.Helper()
	require.NoError(t, c.stream.Resume())
	c.readRows(int(^uint(0) >> 1))
	c.read = c.next() - 1
	err := c.rows.Err()
	if err != nil {
		assert.Equal(t, Failed, c.stream.State())
	}
	return err
}

// requirePoolServes closes the stream's connection and requires the pool
// to serve a query on the standby.
func (c *pausedOnStandby) requirePoolServes(t *testing.T) {
	t.Helper()
	_ = c.rows.Close()
	_ = c.conn.Close()
	var one int
	require.NoError(t, c.db.QueryRow("SELECT 1").Scan(&one), "the pool serves the next query")
}

// watchReplay polls the standby through monitor until it has replayed
// WAL up to lsn and backend pid (unless 0) is gone, or until limit
// passes, and returns when each was first seen, zero for what was not.
// Through connections monitor holds already: WaitReplay opens its own,
// which took up to a second on a loaded machine, too long to time a
// recovery conflict by. Safe in any goroutine.
func watchReplay(monitor *sql.DB, lsn string, pid int, limit time.Duration) (replayed, gone time.Time, err error) {
	deadline := time.Now().Add(limit)
	for {
		var done, ended bool
		if err := monitor.QueryRow(`SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn,
			NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $2)`, lsn, pid).Scan(&done, &ended); err != nil {
			return replayed, gone, err
		}
		now := time.Now()
		if done && replayed.IsZero() {
			replayed = now
		}
		if ended && gone.IsZero() {
			gone = now
		}
		if (!replayed.IsZero() && !gone.IsZero()) || now.After(deadline) {
			return replayed, gone, nil
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitReplay requires the standby to replay what its primary wrote within
// limit.
func waitReplay(t *testing.T, standby *pgtest.Server, limit time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	require.NoError(t, standby.WaitReplay(ctx), "the standby did not replay its primary's WAL")
}
