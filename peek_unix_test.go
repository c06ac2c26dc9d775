//go:build unix

package jsonstream

import (
	"context"
	"crypto/tls"
	"database/sql/driver"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tcpPair returns the two ends of a loopback TCP connection: the client's
// wrapped in a sock, and the server's.
func tcpPair(t *testing.T) (*sock, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	server := <-accepted
	require.NotNil(t, server)
	t.Cleanup(func() { _ = client.Close(); _ = server.Close() })
	return &sock{Conn: client}, server
}

// tlsPair is tcpPair with TLS on top, established as jsonstream's dialer
// does: the sock reads plaintext, and its raw socket holds ciphertext.
func tlsPair(t *testing.T) (*sock, net.Conn) {
	t.Helper()
	s, server := tcpPair(t)
	ca := newTestCA(t, "pair")
	tlsServer := tls.Server(server, &tls.Config{Certificates: []tls.Certificate{ca.serverCert(t, time.Now().Add(time.Hour))}})
	client := tls.Client(s.Conn, &tls.Config{InsecureSkipVerify: true})
	done := make(chan error, 1)
	go func() { done <- tlsServer.Handshake() }()
	require.NoError(t, client.Handshake())
	require.NoError(t, <-done)
	return &sock{Conn: client, raw: s.Conn}, tlsServer
}

// TestEndedWhileIdle: a pooled connection is replaced when the server
// sent a FATAL error or closed it while it sat idle, and kept when the
// server sent nothing or something else (a notification of LISTEN); on
// a plaintext socket and on TLS that jsonstream's dialer established,
// where what the server sent is read through TLS and held for lib/pq. A
// conn taken back within peekAfterIdle is not looked at.
func TestEndedWhileIdle(t *testing.T) {
	for name, pair := range map[string]func(*testing.T) (*sock, net.Conn){"plaintext": tcpPair, "TLS": tlsPair} {
		t.Run(name, func(t *testing.T) { endedWhileIdle(t, pair) })
	}
}

// sockConn is a conn over s, with an in-memory inner conn.
func sockConn(t *testing.T, s *sock) *conn {
	t.Helper()
	st := defaultSettings()
	ic, err := (&fakeDriver{}).Open("")
	require.NoError(t, err)
	return newConn(ic, &st, s)
}

func endedWhileIdle(t *testing.T, tcpPair func(*testing.T) (*sock, net.Conn)) {
	fatal := message('E', errorBody("SFATAL", "VFATAL", "C57P01", "Mterminating connection due to administrator command"))
	notify := message('A', append([]byte{0, 0, 0, 1}, "chan\x00payload\x00"...))
	// settled waits until what the server wrote has reached the client.
	settled := func(s *sock, want bool) bool {
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if s.endedWhileIdle() == want {
				return true
			}
			time.Sleep(time.Millisecond)
		}
		return false
	}
	t.Run("nothing sent", func(t *testing.T) {
		s, _ := tcpPair(t)
		assert.False(t, s.endedWhileIdle())
		assert.False(t, s.endedWhileIdle(), "a second look")
	})
	t.Run("FATAL", func(t *testing.T) {
		s, server := tcpPair(t)
		_, err := server.Write(fatal)
		require.NoError(t, err)
		assert.True(t, settled(s, true))
		buf := make([]byte, len(fatal))
		n, err := s.Read(buf)
		require.NoError(t, err)
		assert.Equal(t, len(fatal), n, "the look took bytes off the socket")
	})
	t.Run("closed", func(t *testing.T) {
		s, server := tcpPair(t)
		require.NoError(t, server.Close())
		assert.True(t, settled(s, true))
	})
	t.Run("a notification", func(t *testing.T) {
		s, server := tcpPair(t)
		_, err := server.Write(notify)
		require.NoError(t, err)
		require.Eventually(t, func() bool { n, _ := s.peek(); return n > 0 }, 5*time.Second, time.Millisecond)
		if !s.encrypted() {
			require.Eventually(t, func() bool { n, _ := s.peek(); return n == len(notify) }, 5*time.Second, time.Millisecond)
		}
		assert.False(t, s.endedWhileIdle())
		buf := make([]byte, 100)
		n, err := s.Read(buf)
		require.NoError(t, err)
		assert.Equal(t, notify, buf[:n], "the notification reaches lib/pq as sent")
	})
	t.Run("ResetSession", func(t *testing.T) {
		s, server := tcpPair(t)
		c := sockConn(t, s)
		require.NoError(t, c.ResetSession(context.Background()))
		require.NoError(t, server.Close())
		require.True(t, settled(s, true))
		assert.ErrorIs(t, c.ResetSession(context.Background()), driver.ErrBadConn)
		assert.False(t, c.IsValid())
	})
	t.Run("reused at once", func(t *testing.T) {
		// A conn database/sql takes back sooner than peekAfterIdle after
		// putting it in the pool (IsValid) is not looked at: the query
		// meets what the server did. One that rested longer is.
		s, server := tcpPair(t)
		c := sockConn(t, s)
		defer func(was time.Duration) { peekAfterIdle = was }(peekAfterIdle)
		peekAfterIdle = time.Hour
		require.NoError(t, c.ResetSession(context.Background()), "taken: the server is there")
		require.NoError(t, server.Close())
		require.True(t, settled(s, true))
		require.True(t, c.IsValid(), "back in the pool")
		assert.False(t, c.pooledAt == 0, "IsValid notes when the conn went back")
		assert.NoError(t, c.ResetSession(context.Background()), "taken back at once: no look")
		assert.True(t, c.IsValid(), "nothing was discarded")
		c.pooledAt -= instant(peekAfterIdle)
		assert.ErrorIs(t, c.ResetSession(context.Background()), driver.ErrBadConn, "rested: looked at")
		assert.False(t, c.IsValid())
	})
	t.Run("put back before any reading", func(t *testing.T) {
		// A conn that went back to the pool before its use read the
		// clock (a new conn's first call, an Exec) is looked at however
		// soon it is taken back.
		s, server := tcpPair(t)
		c := sockConn(t, s)
		defer func(was time.Duration) { peekAfterIdle = was }(peekAfterIdle)
		peekAfterIdle = time.Hour
		require.NoError(t, server.Close())
		require.True(t, settled(s, true))
		require.True(t, c.IsValid(), "back in the pool")
		assert.ErrorIs(t, c.ResetSession(context.Background()), driver.ErrBadConn, "looked at")
	})
	t.Run("no allocation", func(t *testing.T) {
		s, _ := tcpPair(t)
		s.endedWhileIdle()
		assert.Zero(t, testing.AllocsPerRun(100, func() { s.endedWhileIdle() }))
	})
}
