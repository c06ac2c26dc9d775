package jsonstream

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream/internal/pgtest"
)

// jsonPG opens the test server through jsonstream.
func jsonPG(t testing.TB) *sql.DB {
	t.Helper()
	db, err := sql.Open(DriverName, pgtest.DSN(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// jsonDocsQuery streams $1 jsonb documents {"id": n, "pad": "xx..."} with
// a pad of $2 bytes. The set-returning function sits in the select list,
// where PostgreSQL streams its rows instead of materializing them first.
const jsonDocsQuery = `SELECT jsonb_build_object('id', g, 'pad', repeat('x', $2::int))
	FROM (SELECT generate_series(1, $1::int) AS g) s`

// jsonPadItem is a document of jsonDocsQuery.
type jsonPadItem struct {
	ID  int    `json:"id"`
	Pad string `json:"pad"`
}

// requireConnsFree waits until db has no connection in use.
func requireConnsFree(t *testing.T, db *sql.DB, within time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool { return db.Stats().InUse == 0 }, within, 10*time.Millisecond,
		"connections still in use: %d", db.Stats().InUse)
}

func TestEachPGColumnTypes(t *testing.T) {
	db := jsonPG(t)
	const n = 500
	for _, tc := range []struct{ expr, dbType string }{
		{"json_build_object('id', g, 'name', 'n' || g)", "JSON"},
		{"jsonb_build_object('id', g, 'name', 'n' || g)", "JSONB"},
		{"json_build_object('id', g, 'name', 'n' || g)::text", "TEXT"},
		{"json_build_object('id', g, 'name', 'n' || g)::varchar", "VARCHAR"},
	} {
		t.Run(tc.dbType, func(t *testing.T) {
			rows, err := db.Query("SELECT "+tc.expr+" AS doc FROM generate_series(1, $1::int) g", n)
			require.NoError(t, err)
			types, err := rows.ColumnTypes()
			require.NoError(t, err)
			require.Equal(t, tc.dbType, types[0].DatabaseTypeName())

			want := 1
			for v, err := range Each[jsonItem](rows) {
				require.NoError(t, err)
				require.Equal(t, jsonItem{ID: want, Name: "n" + strconv.Itoa(want)}, v)
				want++
			}
			assert.Equal(t, n+1, want)
			requireConnsFree(t, db, time.Second)
		})
	}
}

func TestJSONPGDocumentsAsStored(t *testing.T) {
	db := jsonPG(t)
	// json keeps its input text, jsonb has its canonical form.
	const text = "{ \"b\" : 1,\n  \"a\" : [1, 2] }"
	rows, err := db.Query(`SELECT $1::json UNION ALL SELECT $1::jsonb::json`, text)
	require.NoError(t, err)
	raws, err := jsonCollect(Each[json.RawMessage](rows))
	require.NoError(t, err)
	require.Len(t, raws, 2)
	assert.Equal(t, text, string(raws[0]))
	assert.Equal(t, `{"a": [1, 2], "b": 1}`, string(raws[1]))

	var out bytes.Buffer
	rows, err = db.Query(`SELECT $1::json UNION ALL SELECT $1::jsonb::json`, text)
	require.NoError(t, err)
	_, err = WriteJSONArray(context.Background(), &out, rows)
	require.NoError(t, err)
	assert.Equal(t, "[\n"+text+",\n"+`{"a": [1, 2], "b": 1}`+"\n]\n", out.String())

	out.Reset()
	rows, err = db.Query(`SELECT $1::json`, text)
	require.NoError(t, err)
	_, err = WriteNDJSON(context.Background(), &out, rows)
	require.NoError(t, err)
	assert.Equal(t, "{\"b\":1,\"a\":[1,2]}\n", out.String(), "one line per document")
}

func TestEachPGWrongColumnType(t *testing.T) {
	db := jsonPG(t)
	rows, err := db.Query(`SELECT g AS n FROM generate_series(1, 3) g`)
	require.NoError(t, err)
	_, err = jsonCollect(Each[jsonItem](rows))
	var ce *ColumnError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, "n", ce.Column)
	assert.Equal(t, "INT4", ce.DatabaseType)
	assert.Contains(t, err.Error(), `column "n" (INT4)`)
	requireConnsFree(t, db, time.Second)
}

func TestEachPGNullAndMalformedDocuments(t *testing.T) {
	db := jsonPG(t)
	const q = `SELECT x FROM (VALUES (1, '{"id":1}'::text), (2, NULL), (3, '{"id":')) v(i, x) ORDER BY i`

	rows, err := db.Query(q)
	require.NoError(t, err)
	got, err := jsonCollect(Each[jsonItem](rows))
	assert.Equal(t, []jsonItem{{ID: 1}}, got)
	require.ErrorIs(t, err, ErrNullDocument)
	assert.Contains(t, err.Error(), "row 2")

	rows, err = db.Query(q)
	require.NoError(t, err)
	got, err = jsonCollect(Each[jsonItem](rows, WithSkipNull()))
	assert.Equal(t, []jsonItem{{ID: 1}}, got)
	var de *DocumentError
	require.ErrorAs(t, err, &de)
	assert.Equal(t, int64(3), de.Row)
	assert.Equal(t, `{"id":`, de.Excerpt)
	requireConnsFree(t, db, time.Second)
}

func TestEachPGBreakStopsTheQuery(t *testing.T) {
	db := jsonPG(t)
	// Far more rows than a test could read: only stopping the query ends
	// this quickly.
	rows, err := db.Query(jsonDocsQuery, 50_000_000, 100)
	require.NoError(t, err)
	for v, err := range Each[jsonPadItem](rows) {
		require.NoError(t, err)
		require.Equal(t, 1, v.ID)
		break
	}
	requireConnsFree(t, db, time.Second)
	var one int
	require.NoError(t, db.QueryRow(`SELECT 1`).Scan(&one))
}

func TestEachPGPauseResume(t *testing.T) {
	db := jsonPG(t)
	const n = 2000
	s := mustJSONStream(t)
	rows, err := db.Query(jsonDocsQuery, n, 10, s)
	require.NoError(t, err)

	// The consumer hands each row over unbuffered, so it never runs ahead.
	got := make(chan int)
	iterErr := make(chan error, 1)
	go func() {
		defer close(got)
		for v, err := range Each[jsonPadItem](rows) {
			if err != nil {
				iterErr <- err
				return
			}
			got <- v.ID
		}
		iterErr <- nil
	}()

	var ids []int
	for len(ids) < 10 {
		ids = append(ids, <-got)
	}
	require.NoError(t, s.Pause())
	delivered := s.Stats().Rows
	// A row that Next delivered before the pause may still be on its way
	// to us; nothing after it may come.
	quietEnd := time.After(300 * time.Millisecond)
drain:
	for {
		select {
		case id := <-got:
			ids = append(ids, id)
		case <-quietEnd:
			break drain
		}
	}
	assert.Equal(t, Paused, s.State())
	assert.Equal(t, delivered, s.Stats().Rows, "Next delivered a row while paused")
	assert.Equal(t, delivered, int64(len(ids)))

	require.NoError(t, s.Resume())
	for id := range got {
		ids = append(ids, id)
	}
	require.NoError(t, <-iterErr)
	require.Len(t, ids, n)
	for i, id := range ids {
		require.Equal(t, i+1, id, "rows out of order or repeated")
	}
	assert.Equal(t, Complete, s.State())
	requireConnsFree(t, db, time.Second)
}

func TestEachPGPauseTimeout(t *testing.T) {
	db := jsonPG(t)
	s := mustJSONStream(t, WithPauseTimeout(150*time.Millisecond))
	rows, err := db.Query(jsonDocsQuery, 100_000, 10, s)
	require.NoError(t, err)
	count := 0
	var iterErr error
	start := time.Now()
	for _, err := range Each[jsonPadItem](rows) {
		if err != nil {
			iterErr = err
			continue
		}
		count++
		if count == 5 {
			require.NoError(t, s.Pause())
		}
	}
	require.ErrorIs(t, iterErr, ErrPauseTimeout)
	assert.Equal(t, 5, count)
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.Equal(t, Failed, s.State())
	requireConnsFree(t, db, time.Second)
}

func mustJSONStream(t *testing.T, opts ...Option) *Stream {
	t.Helper()
	s, err := NewStream(opts...)
	require.NoError(t, err)
	return s
}

// jsonHTTPRun is one request served by jsonStreamServer.
type jsonHTTPRun struct {
	stream *Stream
	done   chan struct{} // closed when the handler returns; then n and err are set
	n      int64
	err    error
}

// jsonStreamServer serves GET /?n=N&pad=P with the documents of
// jsonDocsQuery as NDJSON, and reports each request it serves.
func jsonStreamServer(t *testing.T, db *sql.DB) (*httptest.Server, <-chan *jsonHTTPRun) {
	runs := make(chan *jsonHTTPRun, 8)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		stream, err := NewStream()
		if err != nil {
			panic(err) // no options: cannot fail
		}
		run := &jsonHTTPRun{stream: stream, done: make(chan struct{})}
		defer close(run.done)
		runs <- run
		q := r.URL.Query()
		rows, err := db.QueryContext(r.Context(), jsonDocsQuery, q.Get("n"), q.Get("pad"), run.stream)
		if err != nil {
			run.err = err
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		run.n, run.err = WriteNDJSON(r.Context(), w, rows)
	}))
	t.Cleanup(srv.Close)
	return srv, runs
}

// jsonGet starts a request for n documents with a pad of pad bytes.
func jsonGet(t *testing.T, ctx context.Context, srv *httptest.Server, n, pad int) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/?n=%d&pad=%d", srv.URL, n, pad), nil)
	require.NoError(t, err)
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	return resp
}

// jsonWaitRun waits for the handler of run to return.
func jsonWaitRun(t *testing.T, run *jsonHTTPRun, within time.Duration) {
	t.Helper()
	select {
	case <-run.done:
	case <-time.After(within):
		t.Fatalf("the handler did not return within %v", within)
	}
}

func TestWriteNDJSONPGOverHTTP(t *testing.T) {
	db := jsonPG(t)
	srv, runs := jsonStreamServer(t, db)

	t.Run("whole result", func(t *testing.T) {
		const n = 200_000
		resp := jsonGet(t, context.Background(), srv, n, 0)
		defer resp.Body.Close()
		run := <-runs
		assert.Equal(t, "application/x-ndjson", resp.Header.Get("Content-Type"))

		sc := bufio.NewScanner(resp.Body)
		lines := 0
		for sc.Scan() {
			var v jsonPadItem
			require.NoError(t, json.Unmarshal(sc.Bytes(), &v), "line %d: %q", lines+1, sc.Text())
			lines++
			require.Equal(t, lines, v.ID)
		}
		require.NoError(t, sc.Err())
		assert.Equal(t, n, lines)
		jsonWaitRun(t, run, 5*time.Second)
		require.NoError(t, run.err)
		assert.Equal(t, int64(n), run.n)
		requireConnsFree(t, db, time.Second)
	})

	t.Run("slow client holds the stream back", func(t *testing.T) {
		// 200,000 documents of 1 KiB: far more than the socket buffers
		// between server and client can hold.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		resp := jsonGet(t, ctx, srv, 200_000, 1000)
		defer resp.Body.Close()
		run := <-runs
		_, err := io.CopyN(io.Discard, resp.Body, 256<<10)
		require.NoError(t, err)

		// The client reads no more. Once the buffers are full the handler's
		// write blocks and the stream reads no further row.
		var stalled int64
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			before := run.stream.Stats().Rows
			time.Sleep(300 * time.Millisecond)
			if after := run.stream.Stats().Rows; after == before {
				stalled = after
				break
			}
		}
		require.NotZero(t, stalled, "the stream never stopped advancing")
		assert.Less(t, stalled, int64(200_000))
		assert.Equal(t, Running, run.stream.State(), "held back by the writer, not paused or ended")
		t.Logf("stream held at row %d while the client did not read", stalled)

		// Reading again lets it go on.
		_, err = io.CopyN(io.Discard, resp.Body, 8<<20)
		require.NoError(t, err)
		require.Eventually(t, func() bool { return run.stream.Stats().Rows > stalled }, 2*time.Second, 10*time.Millisecond)

		cancel()
		jsonWaitRun(t, run, 2*time.Second)
		assert.Error(t, run.err)
		requireConnsFree(t, db, time.Second)
	})

	t.Run("client disconnects", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		resp := jsonGet(t, ctx, srv, 200_000, 1000)
		defer resp.Body.Close()
		run := <-runs
		_, err := io.CopyN(io.Discard, resp.Body, 64<<10)
		require.NoError(t, err)

		cancel() // closes the client's connection
		start := time.Now()
		jsonWaitRun(t, run, 2*time.Second)
		t.Logf("handler returned %v after the disconnect: %d documents, %v", time.Since(start).Round(time.Millisecond), run.n, run.err)
		require.Error(t, run.err)
		assert.Less(t, run.n, int64(200_000))
		requireConnsFree(t, db, time.Second)

		var one int
		require.NoError(t, db.QueryRow(`SELECT 1`).Scan(&one))
		assert.Equal(t, 1, one)
	})
}

// TestWriteNDJSONPGFlatMemory streams a million documents (about 4 s,
// 12 s under -race, most of it PostgreSQL building jsonb) and samples the
// heap meanwhile: it must stay small whatever the size of the result.
func TestWriteNDJSONPGFlatMemory(t *testing.T) {
	db := jsonPG(t)
	const n = 1_000_000
	// About 280 bytes a document.
	const q = `SELECT jsonb_build_object('id', g, 'name', 'user ' || g,
		'email', 'user' || g || '@example.com', 'active', g % 2 = 0,
		'tags', jsonb_build_array('alpha', 'beta', 'gamma'), 'note', repeat('x', 150))
		FROM (SELECT generate_series(1, $1::int) AS g) s`

	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)

	stop := heapPeak()

	start := time.Now()
	rows, err := db.Query(q, n)
	require.NoError(t, err)
	counter := &jsonCountingWriter{}
	written, err := WriteNDJSON(context.Background(), counter, rows)
	elapsed := time.Since(start)
	peak := stop()
	require.NoError(t, err)
	require.Equal(t, int64(n), written)

	t.Logf("%d documents, %d bytes (%.0f a document) in %v; HeapInuse before %.1f MiB, peak %.1f MiB",
		written, counter.n, float64(counter.n)/n, elapsed.Round(time.Millisecond),
		float64(base.HeapInuse)/(1<<20), float64(peak)/(1<<20))
	assert.Less(t, peak, uint64(32<<20), "peak HeapInuse")
}

// jsonCountingWriter counts the bytes written to it.
type jsonCountingWriter struct{ n int64 }

func (w *jsonCountingWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}
