package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCursorStreamsLeaveNothing runs randomized cursor-backed streams
// from several goroutines: complete, closed early, canceled, paused past
// their timeout, ended by their context, inside and outside transactions.
// Afterwards no session is idle in a transaction, no pooled connection has
// a cursor open, and no goroutine is left (TestMain's goleak).
func TestCursorStreamsLeaveNothing(t *testing.T) {
	streamsLeaveNothing(t, "cursor_stress", false, func(rnd *rand.Rand) Option {
		return WithFetchSize([]int{FetchAuto, 1, 5, 100}[rnd.IntN(4)])
	})
}

// TestPortalStreamsLeaveNothing is the same for portal streams: no portal
// left open, no session in a transaction, no goroutine left, and no
// session beyond the pool's own but those that replaced a connection an
// ending cut. A portal stream's ending cuts only past its bound (a failed
// stream's end gets failedEndTimeout), which a machine loaded beyond
// reason may reach now and then: the cuts are counted by the observer,
// and must stay rare.
func TestPortalStreamsLeaveNothing(t *testing.T) {
	streamsLeaveNothing(t, "portal_stress", true, func(*rand.Rand) Option { return WithStreamMode(ModePortal) })
}

// streamsLeaveNothing runs the rounds in the mode that mode picks for
// each; keepsSessions requires that no ending cut a connection.
func streamsLeaveNothing(t *testing.T, app string, keepsSessions bool, mode func(*rand.Rand) Option) {
	needRowsTable(t)
	total := 10_000
	if testing.Short() {
		total = 1_000
	}
	const workers = 4
	db := openPG(t, DriverName, "application_name="+app)
	db.SetMaxOpenConns(workers)
	db.SetMaxIdleConns(workers)
	monitor := openPG(t, "postgres", "")
	sessions := func() int64 {
		var n int64
		require.NoError(t, monitor.QueryRow("SELECT sessions FROM pg_stat_database WHERE datname = current_database()").Scan(&n))
		return n
	}
	before := sessions()
	var streamsCut atomic.Int64
	counter := WithObserver(ObserverFunc(func(e Event) {
		if e.Kind == EventEnded && e.ConnCut {
			streamsCut.Add(1)
		}
	}))

	var next atomic.Int64
	var counts [8]atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(seed, 7))
			for next.Add(1) <= int64(total) {
				kind := rnd.IntN(len(counts))
				counts[kind].Add(1)
				if err := cursorStressRound(db, rnd, kind, mode(rnd), counter); err != nil {
					errs <- fmt.Errorf("kind %d: %w", kind, err)
					return
				}
			}
		}(uint64(w))
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	// A portal stream's early close outside a transaction may leave its
	// end without Sync for owedSyncDelay, in which the session is idle in
	// its implicit transaction; the connection then sends the Sync on its
	// own. Every session is idle once that is done.
	var busy []string
	deadline := time.Now().Add(5 * time.Second)
	for {
		busy = busy[:0]
		rows, err := monitor.Query(`SELECT state || ': ' || query FROM pg_stat_activity
			WHERE application_name = $1 AND state <> 'idle'`, app)
		require.NoError(t, err)
		for rows.Next() {
			var b string
			require.NoError(t, rows.Scan(&b))
			busy = append(busy, b)
		}
		require.NoError(t, rows.Err())
		if len(busy) == 0 || time.Now().After(deadline) {
			break
		}
		t.Logf("not idle yet: %q", busy)
		time.Sleep(10 * time.Millisecond)
	}
	assert.Empty(t, busy, "sessions left in a transaction or a query")
	// Hold every pooled connection at once and look into each session.
	conns := make([]*sql.Conn, 0, workers)
	for i := 0; i < db.Stats().Idle; i++ {
		c, err := db.Conn(context.Background())
		require.NoError(t, err)
		conns = append(conns, c)
	}
	for _, c := range conns {
		sessionClean(t, c)
		require.NoError(t, c.Close())
	}
	var per []int64
	for i := range counts {
		per = append(per, counts[i].Load())
	}
	opened := sessions() - before
	t.Logf("%d streams (by kind %v): %d new server sessions, %d streams cut, %d failures in a transaction cut",
		total, per, opened, streamsCut.Load(), cuts.Load())
	if keepsSessions {
		assert.LessOrEqual(t, opened, int64(workers)+streamsCut.Load(), "a session beyond the pool's and the cuts'")
		assert.LessOrEqual(t, streamsCut.Load()*100, int64(total), "more than 1%% of the streams cut")
	}
}

// cursorStressRound runs one stream of the given kind.
func cursorStressRound(db *sql.DB, rnd *rand.Rand, kind int, opts ...Option) error {
	ctx := context.Background()
	if kind == 4 {
		opts = append(opts, WithPauseTimeout(time.Millisecond))
	}
	s, err := NewStream(opts...)
	if err != nil {
		return err
	}
	var q interface {
		QueryContext(context.Context, string, ...any) (*sql.Rows, error)
	} = db
	var end func(error) error
	switch rnd.IntN(3) {
	case 1:
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		q = tx
		end = func(error) error { return tx.Rollback() }
	case 2:
		conn, err := db.Conn(ctx)
		if err != nil {
			return err
		}
		if _, err := conn.ExecContext(ctx, "BEGIN"); err != nil {
			return errors.Join(err, conn.Close())
		}
		q = conn
		end = func(error) error {
			_, err := conn.ExecContext(ctx, "ROLLBACK")
			return errors.Join(err, conn.Close())
		}
	}
	n := 1 + rnd.IntN(40)
	if kind >= 2 {
		n = bigRows
	}
	qctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rows, err := q.QueryContext(qctx, bigQuery, n, s)
	if err != nil {
		if end != nil {
			return errors.Join(err, end(err))
		}
		return err
	}
	read := rnd.IntN(20)
	for i := 0; i < read; i++ {
		if !rows.Next() {
			break
		}
	}
	var want error
	switch kind {
	case 0, 1: // complete (kind 1 reads at most 20 rows, then closes early)
		if kind == 0 {
			for rows.Next() {
			}
		}
	case 2: // early close
	case 3:
		_ = s.Cancel()
		want = ErrCanceled
	case 4:
		_ = s.Pause()
		time.Sleep(2 * time.Millisecond)
		want = ErrPauseTimeout
	case 5:
		cancel()
		want = context.Canceled
	case 6:
		_ = s.Pause()
		_ = s.Cancel()
		want = ErrCanceled
	case 7:
		_ = s.Pause()
		cancel()
		want = context.Canceled
	}
	if want != nil {
		for rows.Next() {
		}
		if err := rows.Err(); !errors.Is(err, want) {
			return fmt.Errorf("Err() = %w, want %w", err, want)
		}
	} else if err := rows.Err(); err != nil {
		return err
	}
	if err := rows.Close(); err != nil {
		return fmt.Errorf("Close: %w", err)
	}
	if end == nil {
		return nil
	}
	err = end(nil)
	if want != nil && errors.Is(err, driver.ErrBadConn) {
		// The failure found a batch in flight that did not arrive within
		// the drain timeout (a loaded machine): cut, as documented, and the
		// caller's transaction went with the connection.
		cuts.Add(1)
		return nil
	}
	return err
}

// cuts counts the failures that had to cut a transaction's connection.
var cuts atomic.Int64
