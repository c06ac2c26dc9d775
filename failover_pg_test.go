package jsonstream

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream/internal/pgtest"
)

// TestResumeAcrossFailover: a resumable stream on the primary survives
// its crash (an immediate shutdown) and the promotion of the standby,
// through lib/pq's multi-host DSN with target_session_attrs=read-write:
// its continuations are refused by the dead primary and by the standby
// until it is promoted, then run there, and every row comes once, in
// order.
func TestResumeAcrossFailover(t *testing.T) {
	primary, standby := pgtest.StandbyPair(t, pgtest.StandbyOptions{})
	const n = resumeN
	pdb := openDSN(t, "postgres", primary.DSN())
	_, err := pdb.Exec(`CREATE TABLE jsonstream_test_rows (g int PRIMARY KEY, pad text NOT NULL);
		INSERT INTO jsonstream_test_rows SELECT g, repeat('x', 100) FROM generate_series(1, ` + fmt.Sprint(n) + `) g`)
	require.NoError(t, err)
	waitReplay(t, standby, 30*time.Second)
	require.NoError(t, pdb.Close())

	dsn := fmt.Sprintf("host=127.0.0.1,127.0.0.1 port=%d,%d user=postgres dbname=postgres sslmode=disable target_session_attrs=read-write connect_timeout=5",
		primary.Port(), standby.Port())
	db := openDSN(t, DriverName, dsn)
	log := &eventLog{}
	s := mustStream(t, WithResumeKey(Asc("g")), WithObserver(log),
		WithResumeRetry(RetryPolicy{Attempts: 100, Backoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Total: time.Minute}))
	rows, err := db.QueryContext(context.Background(), bigQuery, n, s)
	require.NoError(t, err)
	defer rows.Close()
	read, next := inOrder(t, rows)
	read(1000)
	require.NoError(t, primary.Crash())
	promoted := make(chan error, 1)
	go func() {
		// The continuations meet a standby first.
		time.Sleep(300 * time.Millisecond)
		promoted <- standby.Promote(context.Background())
	}()
	read(n)
	require.NoError(t, rows.Err())
	require.NoError(t, <-promoted)
	assert.Equal(t, n+1, next(), "every row once, in order")
	st := s.Stats()
	assert.Equal(t, int64(n), st.Rows)
	assert.Positive(t, st.Resumes)
	require.NoError(t, rows.Close())
	require.Equal(t, 1, log.count(EventContinued))
	t.Logf("failover: %d rows, continued %v after the failure (%v)", st.Rows, log.continued[0].Continued, log.continued[0].Err)
	var inRecovery bool
	require.NoError(t, db.QueryRow("SELECT pg_is_in_recovery()").Scan(&inRecovery))
	assert.False(t, inRecovery, "the pool reaches the promoted node")
}

// TestResumeAcrossAutoFailover: the same with a real high-availability
// manager: a pg_auto_failover formation (monitor, primary, secondary),
// whose primary the test only kills; the monitor promotes the secondary
// on its own, and the stream, with the default retry policy, continues
// there through the formation's multi-host DSN. resumeN rows, checked by
// count, sum and a running hash of the keys.
func TestResumeAcrossAutoFailover(t *testing.T) {
	f := pgtest.AutoFailover(t)
	const n = resumeN
	ports := f.Ports()
	pdb := openDSN(t, "postgres", f.NodeDSN(ports[0]))
	// Committed on the primary only once the secondary has it: the
	// formation replicates synchronously.
	_, err := pdb.Exec(`CREATE TABLE jsonstream_test_rows (g int PRIMARY KEY, pad text NOT NULL);
		INSERT INTO jsonstream_test_rows SELECT g, repeat('x', 100) FROM generate_series(1, ` + fmt.Sprint(n) + `) g`)
	require.NoError(t, err)
	require.NoError(t, pdb.Close())

	db := openDSN(t, DriverName, f.DSN())
	log := &eventLog{}
	s := mustStream(t, WithResumeKey(Asc("g")), WithObserver(log))
	rows, err := db.QueryContext(context.Background(), bigQuery, n, s)
	require.NoError(t, err)
	defer rows.Close()
	var got checksum
	scan := func(k int) {
		for i := 0; i < k && rows.Next(); i++ {
			var g int64
			var pad string
			require.NoError(t, rows.Scan(&g, &pad))
			got.add(g)
		}
	}
	scan(1000)
	killed, err := f.KillPrimary(context.Background())
	require.NoError(t, err)
	require.Equal(t, ports[0], killed)
	scan(n)
	require.NoError(t, rows.Err())
	assert.Equal(t, wantChecksum(n), got, "every row once, in order")
	require.NoError(t, rows.Close())
	st := s.Stats()
	assert.Equal(t, int64(n), st.Rows)
	assert.Equal(t, int64(1), st.Resumes)
	require.Equal(t, 1, log.count(EventContinued))
	t.Logf("pg_auto_failover: %d rows, continued %v after the failure (%v)", st.Rows, log.continued[0].Continued, log.continued[0].Err)

	// The pool hands out connections to the promoted node only.
	for range 5 {
		var port int
		var inRecovery bool
		require.NoError(t, db.QueryRow("SELECT inet_server_port(), pg_is_in_recovery()").Scan(&port, &inRecovery))
		assert.Equal(t, ports[1], port)
		assert.False(t, inRecovery)
	}
}
