package bench

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// echoServer answers every connection by sending back what it reads,
// until the client half-closes; then it closes too.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	// Serves until the test's cleanup closes the listener.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// Echoes one connection until the client's half close.
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// TestDelayProxy checks that the proxy forwards data intact both ways,
// holds it back by at least its delay, passes a half close on after the
// data, and ends its connections when closed.
func TestDelayProxy(t *testing.T) {
	const delay = 20 * time.Millisecond
	p, err := StartDelayProxy(echoServer(t), delay)
	require.NoError(t, err)
	c, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer c.Close()

	// More than one read buffer and more than the socket buffers, written
	// while the echo is read, so that chunks of every size go through.
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	sent := time.Now()
	go func() {
		_, _ = c.Write(data)
		_ = c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	require.NoError(t, err, "the echo ends with the end of what was sent")
	// A lower bound only: the data went there and back through the proxy.
	assert.GreaterOrEqual(t, time.Since(sent), 2*delay)
	assert.True(t, bytes.Equal(got, data), "got %d bytes back, sent %d", len(got), len(data))

	c2, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer c2.Close()
	_, err = c2.Write([]byte("x"))
	require.NoError(t, err)
	one := make([]byte, 1)
	_, err = io.ReadFull(c2, one)
	require.NoError(t, err)
	require.NoError(t, p.Close(), "Close ends the open connection and returns")
	_, err = c2.Read(one)
	assert.Error(t, err, "the connection outlived the proxy")
}

func TestProxyDSN(t *testing.T) {
	addr, err := ServerAddr("host=127.0.0.1 port=5433 user=postgres sslmode=disable")
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1:5433", addr)
	addr, err = ServerAddr("postgres://u@localhost:6000/db?sslmode=disable")
	require.NoError(t, err)
	assert.Equal(t, "localhost:6000", addr)
	_, err = ServerAddr("host=/var/run/postgresql")
	assert.Error(t, err, "a Unix socket cannot be proxied")

	for dsn, want := range map[string]string{
		"host=db port=5432 user=u":               "127.0.0.1:7000",
		"postgres://u@db:5432/x?sslmode=disable": "127.0.0.1:7000",
		"postgres://u@db/x?host=other&port=5":    "127.0.0.1:7000",
	} {
		got, err := WithAddr(dsn, "127.0.0.1:7000")
		require.NoError(t, err)
		addr, err := ServerAddr(got)
		require.NoError(t, err, got)
		assert.Equal(t, want, addr, "%s became %s", dsn, got)
	}
	got, err := WithAddr("postgres://u@db:5432/x?sslmode=disable", "127.0.0.1:7000")
	require.NoError(t, err)
	assert.Contains(t, got, "sslmode=disable", "other parameters stay")
}
