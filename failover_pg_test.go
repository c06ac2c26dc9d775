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
	const n = 200_000
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
