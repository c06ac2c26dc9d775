package jsonstream_test

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream/internal/pgtest"
)

// withSearchPath returns dsn with the session's search_path set to schema.
func withSearchPath(dsn, schema string) string {
	if strings.Contains(dsn, "://") {
		sep := "?"
		if strings.Contains(dsn, "?") {
			sep = "&"
		}
		return dsn + sep + "search_path=" + schema
	}
	return dsn + " search_path=" + schema
}

// readmeDocuments makes a schema of the shared server holding a table
// documents(id, data) of n JSON documents, as the README's code reads, and
// returns a jsonstream pool whose search_path finds it, a lib/pq pool and
// the pool's DSN.
func readmeDocuments(t *testing.T, schema string, n int) (db, admin *sql.DB, dsn string) {
	t.Helper()
	base := pgtest.DSN(t)
	admin, err := sql.Open("postgres", base)
	require.NoError(t, err)
	t.Cleanup(func() { _ = admin.Close() })
	_, err = admin.Exec(fmt.Sprintf(`DROP SCHEMA IF EXISTS %[1]s CASCADE;
		CREATE SCHEMA %[1]s;
		CREATE TABLE %[1]s.documents (id int PRIMARY KEY, data jsonb NOT NULL);
		INSERT INTO %[1]s.documents
		SELECT g, jsonb_build_object('id', g, 'title', 'doc ' || g, 'pad', repeat('x', 480))
		FROM generate_series(1, %[2]d) g`, schema, n))
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = admin.Exec("DROP SCHEMA " + schema + " CASCADE") })
	dsn = withSearchPath(base, schema)
	db, err = sql.Open("jsonstream", dsn)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return db, admin, dsn
}

// TestReadmeSnippetsRun runs the README's quick start, Each and observer
// snippets against PostgreSQL.
func TestReadmeSnippetsRun(t *testing.T) {
	// More documents than a portal's first batch (16): the observer snippet's
	// early close then closes the portal, as its comment says.
	db, _, dsn := readmeDocuments(t, "readme_snippets", 20)
	ctx := context.Background()
	require.NoError(t, readmeQuickStart(ctx, dsn))
	require.NoError(t, readmeEach(ctx, db))
	var logs safeBuffer
	prev := log.Writer()
	log.SetOutput(&logs)
	t.Cleanup(func() { log.SetOutput(prev) })
	require.NoError(t, readmeObserver(ctx, db))
	assert.Regexp(t, `portal stream: portal_closed, 0 rows`, logs.String())
}

// TestReadmeHandlerWithDisconnectingClients runs the README's NDJSON
// handler against PostgreSQL and real HTTP clients that go away at random
// points (before the headers, mid-body, after a few bytes): no handler
// panics, every query stops on the server, the pool ends with no
// connection in use and serves the next query, and a client that stays
// gets every document and the complete trailer.
func TestReadmeHandlerWithDisconnectingClients(t *testing.T) {
	const docs = 20_000 // ~10 MB of NDJSON: more than any socket buffers
	db, admin, _ := readmeDocuments(t, "readme_handler", docs)
	db.SetMaxOpenConns(4)

	var logs safeBuffer
	prev := log.Writer()
	log.SetOutput(&logs)
	t.Cleanup(func() { log.SetOutput(prev) })
	srv := httptest.NewUnstartedServer(documents(db))
	var serverLog safeBuffer
	srv.Config.ErrorLog = log.New(&serverLog, "", 0)
	srv.Start()
	defer srv.Close()

	// A client that stays to the end.
	resp, err := http.Get(srv.URL)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	_ = resp.Body.Close()
	assert.Equal(t, docs, bytes.Count(body, []byte("\n")))
	assert.Equal(t, "complete", resp.Trailer.Get("Jsonstream-Status"))

	// 100 that do not.
	rng := rand.New(rand.NewPCG(1, 2))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := 0; i < 100; i++ {
		readBytes := rng.IntN(len(body)) // where the client leaves
		early := i%10 == 0               // some leave before the headers
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
			if early {
				time.AfterFunc(time.Duration(readBytes%5)*time.Millisecond, cancel)
			}
			resp, err := http.DefaultTransport.RoundTrip(req)
			if err != nil {
				return // left before the headers
			}
			_, _ = io.CopyN(io.Discard, resp.Body, int64(readBytes))
			cancel() // leaves: the transport closes the connection
			_ = resp.Body.Close()
		}()
	}
	wg.Wait()
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()

	// Every query of the handler stops on the server.
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, admin.QueryRow(`SELECT count(*) FROM pg_stat_activity
			WHERE query LIKE '%FROM documents ORDER BY id%' AND state = 'active' AND pid <> pg_backend_pid()`).Scan(&n))
		return n == 0
	}, 30*time.Second, 20*time.Millisecond, "queries of departed clients still run")
	// The pool is healthy.
	require.Eventually(t, func() bool { return db.Stats().InUse == 0 }, 30*time.Second, 10*time.Millisecond,
		"connections still in use: %+v", db.Stats())
	var n int
	require.NoError(t, db.QueryRow("SELECT count(*) FROM documents").Scan(&n))
	assert.Equal(t, docs, n)

	srv.Close() // waits for the handlers
	assert.NotContains(t, serverLog.String(), "panic", "a handler panicked")
	assert.Empty(t, serverLog.String())
	out := logs.String()
	assert.NotContains(t, out, "failed after", "a departed client was logged as a failure")
	assert.Contains(t, out, "client left after", "no departure was logged")
	t.Logf("%d departures logged", strings.Count(out, "client left after"))
}

// safeBuffer is a bytes.Buffer for several goroutines.
type safeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *safeBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *safeBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
