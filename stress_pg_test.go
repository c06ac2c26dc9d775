package jsonstream

import (
	"context"
	"database/sql"
	"errors"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestStress runs 32 concurrent streams against the server for a bounded
// time, each randomly reading fully, pausing and resuming, cancelling,
// closing early or having its context end. Fully read streams must have
// the right checksum; nothing may deadlock; afterwards no goroutine and no
// server connection may be left. JSONSTREAM_STRESS sets the duration
// (e.g. 2m); the default is short enough for CI.
func TestStress(t *testing.T) {
	needRowsTable(t)
	duration := 8 * time.Second
	if testing.Short() {
		duration = 3 * time.Second
	}
	if v := os.Getenv("JSONSTREAM_STRESS"); v != "" {
		d, err := time.ParseDuration(v)
		require.NoError(t, err, "JSONSTREAM_STRESS")
		duration = d
	}
	const workers = 32
	// Registered first, so it runs after the cleanups that close the DBs.
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })

	db := openPG(t, DriverName, "application_name=jsonstream_stress")
	db.SetMaxOpenConns(workers)
	monitor := openPG(t, "postgres", "")

	var counts [5]atomic.Int64 // per action, the streams that ended as expected
	deadline := time.Now().Add(duration)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) { // one worker; ends at the deadline
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for time.Now().Before(deadline) && !t.Failed() {
				action := rng.IntN(len(counts))
				if stressRound(t, db, rng, action) {
					counts[action].Add(1)
				}
			}
		}(w)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(duration + time.Minute):
		t.Fatal("stress workers deadlocked")
	}
	t.Logf("full %d, pause/resume %d, cancel %d, early close %d, context %d",
		counts[0].Load(), counts[1].Load(), counts[2].Load(), counts[3].Load(), counts[4].Load())
	for i := range counts {
		assert.Positive(t, counts[i].Load(), "action %d never ran to its end", i)
	}

	require.NoError(t, db.Close())
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, monitor.QueryRow(`SELECT count(*) FROM pg_stat_activity WHERE application_name = 'jsonstream_stress'`).Scan(&n))
		return n == 0
	}, 5*time.Second, 20*time.Millisecond, "server connections left over")
}

// stressRound runs one stream with the given action and reports whether
// it ended as that action must.
func stressRound(t *testing.T, db *sql.DB, rng *rand.Rand, action int) bool {
	n := 1000 + rng.IntN(20_000)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := NewStream()
	require.NoError(t, err)
	rows, err := db.QueryContext(ctx, bigQuery, n, s)
	if err != nil {
		t.Errorf("query: %v", err)
		return false
	}
	defer rows.Close()
	stopAt := 1 + rng.IntN(n-1)
	var controller sync.WaitGroup
	defer controller.Wait()
	switch action {
	case 1: // pause and resume from another goroutine, several times
		controller.Add(1)
		go func() { // ends after its last Resume
			defer controller.Done()
			for i := 0; i < 3; i++ {
				_ = s.Pause()
				time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
				_ = s.Resume()
			}
		}()
	case 2: // Cancel from another goroutine
		controller.Add(1)
		go func() { // ends after Cancel
			defer controller.Done()
			time.Sleep(time.Duration(rng.IntN(2000)) * time.Microsecond)
			_ = s.Cancel()
		}()
	case 4: // the context ends mid-stream
		time.AfterFunc(time.Duration(rng.IntN(5000))*time.Microsecond, cancel)
	}
	count, sum := 0, 0
	for rows.Next() {
		var g int
		var pad sql.RawBytes
		if err := rows.Scan(&g, &pad); err != nil {
			if action == 4 && errors.Is(err, context.Canceled) {
				return true // the context ended between Next and Scan
			}
			t.Errorf("scan: %v", err)
			return false
		}
		count++
		sum += g
		if action == 3 && count == stopAt {
			return rows.Close() == nil && s.State() == Closed
		}
	}
	err = rows.Err()
	switch action {
	case 0, 1:
		if err != nil || count != n || sum != n*(n+1)/2 {
			t.Errorf("action %d: read %d rows (sum %d) of %d, err %v", action, count, sum, n, err)
			return false
		}
		return s.State() == Complete
	case 2:
		if err == nil { // finished before Cancel came
			return false
		}
		if !errors.Is(err, ErrCanceled) {
			t.Errorf("after Cancel: %v", err)
		}
		return s.State() == Failed
	case 4:
		if err == nil {
			return false
		}
		if !errors.Is(err, context.Canceled) {
			t.Errorf("after the context ended: %v", err)
		}
		return true
	}
	return false
}
