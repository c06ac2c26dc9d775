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

// TestSessionEndedWhilePortalPaused: the backend of a paused portal stream
// waits for the next Execute while the rest of its last batches may still
// sit in the socket buffers, and a FATAL that ends its session queues
// behind them. Resume reads them before it asks for more: an Execute
// written to the closed connection is answered by a reset that drops
// what the server had not sent yet, the FATAL with it.
func TestSessionEndedWhilePortalPaused(t *testing.T) {
	db := openPG(t, DriverName, "")
	monitor := openPG(t, "postgres", "")
	conn, pid := backend(t, db)
	s := mustStream(t)
	const n = 200_000
	rows, err := conn.QueryContext(context.Background(), bigQuery, n, s)
	require.NoError(t, err)
	defer rows.Close()
	read, next := inOrder(t, rows)
	read(1000)
	require.NoError(t, s.Pause())
	require.Eventually(t, func() bool {
		state, we, _ := activity(t, monitor, pid)
		return state == "active" && we == "ClientRead"
	}, 5*time.Second, 10*time.Millisecond, "the paused backend should wait for the next Execute")
	var ok bool
	require.NoError(t, monitor.QueryRow("SELECT pg_terminate_backend($1)", pid).Scan(&ok))
	require.True(t, ok)
	require.Eventually(t, func() bool { _, _, alive := activity(t, monitor, pid); return !alive },
		5*time.Second, 5*time.Millisecond)

	// Paused on, as under a recovery conflict. Resumed at once, the stream
	// often reads the FATAL before the reset comes; a second later, it
	// did not before Resume waited for the batches in flight.
	time.Sleep(time.Second)
	require.NoError(t, s.Resume())
	read(n)
	err = rows.Err()
	t.Logf("%d rows, then %v", next()-1, err)
	var pqErr *pq.Error
	require.ErrorAs(t, err, &pqErr, "the server's FATAL, not the reset that followed it")
	assert.Equal(t, "57P01", string(pqErr.Code))
	var ended *SessionEndedError
	assert.ErrorAs(t, err, &ended)
	_ = rows.Close()
	_ = conn.Close()
	var one int
	require.NoError(t, db.QueryRow("SELECT 1").Scan(&one), "the pool recovers")
}
