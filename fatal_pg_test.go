package jsonstream

import (
	"context"
	"database/sql/driver"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSessionEndedKeepsServerError: when the server ends a stream's
// session (here pg_terminate_backend, SQLSTATE 57P01), Next's error
// carries the server's FATAL error for errors.As and driver.ErrBadConn,
// so the pool discards the connection; in both stream modes.
func TestSessionEndedKeepsServerError(t *testing.T) {
	for _, mode := range streamModes {
		for _, tlsMode := range []string{"sslmode=disable", "sslmode=require"} {
			t.Run("mode="+mode+"/"+tlsMode, func(t *testing.T) {
				sessionEndedKeepsServerError(t, mode, tlsMode)
			})
		}
	}
}

// sessionEndedKeepsServerError: on a plaintext connection and on TLS that
// jsonstream's dialer established, where the framer keeps the FATAL.
func sessionEndedKeepsServerError(t *testing.T, mode, tlsMode string) {
	db := openPG(t, DriverName, mode+" "+tlsMode)
	db.SetMaxOpenConns(1)
	monitor := openPG(t, "postgres", "")
	conn, pid := backend(t, db)
	// Rows that come slowly: the server is never blocked writing,
	// so its FATAL reaches the client.
	s := mustStream(t)
	rows, err := conn.QueryContext(context.Background(),
		"SELECT g, pg_sleep(0.002) FROM generate_series(1, 100000) g", s)
	require.NoError(t, err)
	require.True(t, rows.Next())
	// A cursor's server is ended while it waits between batches (the
	// stream paused): one ended while it computes a batch may reset
	// the connection before its FATAL is read, and a reset drops
	// what the client had not read.
	if mode != singleDSN {
		require.NoError(t, s.Pause())
	}
	var ok bool
	require.NoError(t, monitor.QueryRow("SELECT pg_terminate_backend($1)", pid).Scan(&ok))
	require.True(t, ok)
	if mode != singleDSN {
		require.Eventually(t, func() bool { _, _, alive := activity(t, monitor, pid); return !alive },
			5*time.Second, 5*time.Millisecond)
		require.NoError(t, s.Resume())
	}
	deadline := time.Now().Add(10 * time.Second)
	read := 0
	for rows.Next() && time.Now().Before(deadline) {
		read++
	}
	t.Logf("%d more rows, then %v", read, rows.Err())
	err = rows.Err()
	require.Error(t, err)
	assert.ErrorIs(t, err, driver.ErrBadConn, "the pool discards the connection")
	var pqErr *pq.Error
	require.ErrorAs(t, err, &pqErr, "%v", err)
	assert.Equal(t, "57P01", string(pqErr.Code))
	assert.Equal(t, "FATAL", pqErr.Severity)
	assert.Contains(t, pqErr.Message, "administrator command")
	var ended *SessionEndedError
	require.ErrorAs(t, err, &ended)
	assert.Contains(t, err.Error(), "the server ended the session")
	_ = rows.Close()
	_ = conn.Close()
	var one int
	require.NoError(t, db.QueryRow("SELECT 1").Scan(&one), "the pool recovers")
}
