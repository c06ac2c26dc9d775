package jsonstream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestWriterErrorIsClientGone: an error of w's own, from a Write or a
// Flush, wraps ErrClientGone and keeps w's error reachable; a failure of
// the query, of a document or of the context does not wrap ErrClientGone.
func TestWriterErrorIsClientGone(t *testing.T) {
	big := []byte(`{"pad":"` + strings.Repeat("x", writeBufferSize) + `"}`)
	t.Run("write", func(t *testing.T) {
		w := &jsonFailingWriter{ok: 10, err: &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", syscall.EPIPE)}}
		_, err := WriteNDJSON(context.Background(), w, jsonQuery(t, jsonDocRows("JSONB", big, big)))
		require.ErrorIs(t, err, ErrClientGone)
		assert.ErrorIs(t, err, syscall.EPIPE)
		var opErr *net.OpError
		assert.ErrorAs(t, err, &opErr)
		assert.Contains(t, err.Error(), "writing to the client failed")
	})
	t.Run("end of the array", func(t *testing.T) {
		// Everything fits in the buffer: w fails at the final write.
		w := &jsonFailingWriter{ok: 0, err: syscall.ECONNRESET}
		_, err := WriteJSONArray(context.Background(), w, jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`))))
		require.ErrorIs(t, err, ErrClientGone)
		assert.ErrorIs(t, err, syscall.ECONNRESET)
	})
	t.Run("flush", func(t *testing.T) {
		w := &jsonErrFlusher{err: errors.New("flush failed")}
		_, err := WriteNDJSON(context.Background(), w, jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`), []byte(`{"id":2}`))), WithFlushEvery(1))
		require.ErrorIs(t, err, ErrClientGone)
		assert.ErrorIs(t, err, w.err)
	})
	t.Run("not the writer's", func(t *testing.T) {
		var out bytes.Buffer
		_, err := WriteNDJSON(context.Background(), &out, jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`), nil)))
		require.ErrorIs(t, err, ErrNullDocument)
		assert.NotErrorIs(t, err, ErrClientGone)

		rows := sqlmock.NewRowsWithColumnDefinition(sqlmock.NewColumn("doc").OfType("JSONB", nil)).
			AddRow([]byte(`{"id":1}`)).RowError(0, errors.New("server went away"))
		_, err = WriteNDJSON(context.Background(), &out, jsonQuery(t, rows))
		require.Error(t, err)
		assert.NotErrorIs(t, err, ErrClientGone)

		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err = WriteNDJSON(ctx, &out, jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`))))
		require.ErrorIs(t, err, context.Canceled)
		assert.NotErrorIs(t, err, ErrClientGone)
	})
}

// serveDocuments runs write in an HTTP handler over real HTTP/1.1 and
// returns the body the client read, its read error and the status
// trailer.
func serveDocuments(t *testing.T, write func(http.ResponseWriter) error) (body string, trailer http.Header, readErr error) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if err := write(w); err != nil {
			t.Logf("handler: %v", err)
		}
	}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, readErr := io.ReadAll(resp.Body)
	return string(b), resp.Trailer, readErr
}

// TestWriterStatusTrailer: on an http.ResponseWriter the writers end the
// response with the Jsonstream-Status trailer: complete when every
// document was written, failed when the writing stopped after the body
// began, and none when it stopped before (the handler may still send an
// error status then).
func TestWriterStatusTrailer(t *testing.T) {
	for name, write := range map[string]func(context.Context, io.Writer, *sqlmock.Rows, ...JSONOption) (int64, error){
		"NDJSON": func(ctx context.Context, w io.Writer, rows *sqlmock.Rows, opts ...JSONOption) (int64, error) {
			return WriteNDJSON(ctx, w, jsonQuery(t, rows), opts...)
		},
		"array": func(ctx context.Context, w io.Writer, rows *sqlmock.Rows, opts ...JSONOption) (int64, error) {
			return WriteJSONArray(ctx, w, jsonQuery(t, rows), opts...)
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Run("complete", func(t *testing.T) {
				body, trailer, err := serveDocuments(t, func(w http.ResponseWriter) error {
					_, err := write(context.Background(), w, jsonDocRows("JSONB", []byte(`{"id":1}`), []byte(`{"id":2}`)))
					return err
				})
				require.NoError(t, err)
				assert.Contains(t, body, `{"id":2}`)
				assert.Equal(t, StatusComplete, trailer.Get(TrailerStatus))
			})
			t.Run("empty", func(t *testing.T) {
				_, trailer, err := serveDocuments(t, func(w http.ResponseWriter) error {
					_, err := write(context.Background(), w, jsonDocRows("JSONB"))
					return err
				})
				require.NoError(t, err)
				assert.Equal(t, StatusComplete, trailer.Get(TrailerStatus))
			})
			t.Run("failed mid-stream", func(t *testing.T) {
				body, trailer, err := serveDocuments(t, func(w http.ResponseWriter) error {
					_, err := write(context.Background(), w, jsonDocRows("JSONB", []byte(`{"id":1}`), nil), WithFlushEvery(1))
					return err
				})
				require.NoError(t, err)
				assert.Contains(t, body, `{"id":1}`)
				assert.Equal(t, StatusFailed, trailer.Get(TrailerStatus))
				assert.NotContains(t, trailer.Get(TrailerStatus), "NULL", "the error reached the client")
			})
			t.Run("failed before the body", func(t *testing.T) {
				var status int
				_, trailer, err := serveDocuments(t, func(w http.ResponseWriter) error {
					_, err := write(context.Background(), w, jsonDocRows("JSONB", nil))
					if err != nil {
						status = http.StatusInternalServerError
						http.Error(w, "no documents", status)
					}
					return err
				})
				require.NoError(t, err)
				assert.Equal(t, http.StatusInternalServerError, status)
				assert.Empty(t, trailer.Get(TrailerStatus), "a trailer on the handler's error response")
			})
		})
	}
}

// TestWriteTimeout: WithWriteTimeout sets w's write deadline before each
// write, so a client that stops reading fails the writing with
// ErrClientGone wrapping os.ErrDeadlineExceeded; a writer without a
// deadline is refused before anything is written, as is a bad duration.
func TestWriteTimeout(t *testing.T) {
	t.Run("stalled reader", func(t *testing.T) {
		client, server := net.Pipe() // no buffer: a write waits for the reader
		defer client.Close()
		defer server.Close()
		go func() { // reads the first block, then stops reading
			buf := make([]byte, writeBufferSize)
			_, _ = io.ReadFull(client, buf[:1])
		}()
		big := []byte(`{"pad":"` + strings.Repeat("x", writeBufferSize) + `"}`)
		start := time.Now()
		_, err := WriteNDJSON(context.Background(), server, jsonQuery(t, jsonDocRows("JSONB", big, big, big)), WithWriteTimeout(50*time.Millisecond))
		require.ErrorIs(t, err, ErrClientGone)
		assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
		assert.Less(t, time.Since(start), 5*time.Second)
	})
	t.Run("no deadline", func(t *testing.T) {
		var out bytes.Buffer
		_, err := WriteNDJSON(context.Background(), &out, jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`))), WithWriteTimeout(time.Second))
		require.ErrorIs(t, err, ErrInvalidOption)
		assert.Contains(t, err.Error(), "*bytes.Buffer has no write deadline")
		assert.Zero(t, out.Len())
	})
	t.Run("recorder", func(t *testing.T) {
		rec := httptest.NewRecorder() // its connection has no deadline
		_, err := WriteNDJSON(context.Background(), rec, jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`))), WithWriteTimeout(time.Second))
		require.ErrorIs(t, err, ErrInvalidOption)
		assert.Contains(t, err.Error(), "cannot be set")
		assert.Zero(t, rec.Body.Len())
		assert.Empty(t, rec.Header(), "the header was touched")
	})
	t.Run("over HTTP", func(t *testing.T) {
		body, trailer, err := serveDocuments(t, func(w http.ResponseWriter) error {
			_, err := WriteNDJSON(context.Background(), w, jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`))), WithWriteTimeout(time.Minute))
			return err
		})
		require.NoError(t, err)
		assert.Equal(t, "{\"id\":1}\n", body)
		assert.Equal(t, StatusComplete, trailer.Get(TrailerStatus))
	})
	t.Run("bad duration", func(t *testing.T) {
		for _, d := range []time.Duration{0, -time.Second} {
			var out bytes.Buffer
			_, err := WriteNDJSON(context.Background(), &out, jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`))), WithWriteTimeout(d))
			require.ErrorIs(t, err, ErrInvalidOption, "%v", d)
			assert.Contains(t, err.Error(), "must be positive")
		}
	})
}
