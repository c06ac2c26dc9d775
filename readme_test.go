package jsonstream_test

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream"
)

// The README's code, compiled (and where it can run without a server,
// run) here. TestReadmeCodeBlocks keeps the two from drifting apart.

func readmeQuickStart(ctx context.Context, dsn string) error {
	db, err := sql.Open("jsonstream", dsn) // any lib/pq DSN; the rest of the code stays
	if err != nil {
		return err
	}
	defer db.Close()
	stream, err := jsonstream.NewStream()
	if err != nil {
		return err
	}
	rows, err := db.QueryContext(ctx, "SELECT data FROM documents", stream)
	if err != nil {
		return err
	}
	defer rows.Close() // an early Close stops the query on the server at once
	// From any goroutine: stream.Pause(), stream.Resume(), stream.Cancel().
	for rows.Next() {
		var doc []byte
		if err := rows.Scan(&doc); err != nil {
			return err
		}
	}
	return rows.Err()
}

func readmeEach(ctx context.Context, db *sql.DB) error {
	type Document struct {
		ID    int    `json:"id"`
		Title string `json:"title"`
	}
	rows, err := db.QueryContext(ctx, "SELECT data FROM documents ORDER BY id")
	if err != nil {
		return err
	}
	for doc, err := range jsonstream.Each[Document](rows) { // closes rows
		if err != nil {
			return err // a NULL or malformed document names its row
		}
		fmt.Println(doc.ID, doc.Title)
	}
	return nil
}

func readmeObserver(ctx context.Context, db *sql.DB) error {
	observer := jsonstream.ObserverFunc(func(e jsonstream.Event) {
		if e.Kind == jsonstream.EventEnded {
			log.Printf("%s stream: %s, %d rows", e.Mode, e.Outcome, e.Stats.Rows)
		}
	})
	stream, err := jsonstream.NewStream(jsonstream.WithObserver(observer))
	if err != nil {
		return err
	}
	rows, err := db.QueryContext(ctx, "SELECT data FROM documents", stream)
	if err != nil {
		return err
	}
	return rows.Close() // logs "portal stream: portal_closed, 0 rows"
}

func readmeBackpressure(ctx context.Context, dsn string, send func([]byte) error, congested <-chan bool) error {
	db, err := sql.Open("jsonstream", dsn) // any lib/pq DSN
	if err != nil {
		return err
	}
	defer db.Close()

	stream, err := jsonstream.NewStream(jsonstream.WithPauseTimeout(30 * time.Second))
	if err != nil {
		return err
	}
	rows, err := db.QueryContext(ctx, "SELECT data FROM documents", stream)
	if err != nil {
		return err
	}
	defer rows.Close()

	// Backpressure from any goroutine: while paused, Next waits and
	// nothing more is read from the server.
	go func() {
		for full := range congested {
			if full {
				_ = stream.Pause()
			} else {
				_ = stream.Resume()
			}
		}
	}()

	for rows.Next() {
		var doc []byte
		if err := rows.Scan(&doc); err != nil {
			return err
		}
		if err := send(doc); err != nil {
			return err // Close (deferred) stops the server-side query at once
		}
	}
	return rows.Err() // errors.Is(err, jsonstream.ErrPauseTimeout) if a pause was forgotten
}

func Example_backpressure() {
	congested := make(chan bool)
	close(congested)
	_ = readmeBackpressure(context.Background(), "host=db.internal dbname=app", func([]byte) error { return nil }, congested)
}

// LatestTitles is the code under test in the README's go-sqlmock example.
func LatestTitles(ctx context.Context, db *sql.DB, limit int) ([]string, error) {
	rows, err := db.QueryContext(ctx, "SELECT data->>'title' FROM documents ORDER BY id DESC LIMIT $1", limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var titles []string
	for rows.Next() {
		var title string
		if err := rows.Scan(&title); err != nil {
			return nil, err
		}
		titles = append(titles, title)
	}
	return titles, rows.Err()
}

func TestLatestTitles(t *testing.T) {
	mockDB, mock, err := sqlmock.NewWithDSN("latest_titles")
	require.NoError(t, err)
	defer mockDB.Close()

	// The same jsonstream wrapper as sql.Open("jsonstream", dsn), around
	// go-sqlmock's driver instead of lib/pq.
	drv, err := jsonstream.NewDriver(mockDB.Driver())
	require.NoError(t, err)
	connector, err := drv.OpenConnector("latest_titles")
	require.NoError(t, err)
	db := sql.OpenDB(connector)
	defer db.Close()

	mock.ExpectQuery(`SELECT data->>'title' FROM documents`).WithArgs(2).
		WillReturnRows(sqlmock.NewRows([]string{"title"}).AddRow("b").AddRow("a"))

	titles, err := LatestTitles(context.Background(), db, 2)
	require.NoError(t, err)
	require.Equal(t, []string{"b", "a"}, titles)
	require.NoError(t, mock.ExpectationsWereMet())
}

func Example_http() {
	db, err := sql.Open("jsonstream", os.Getenv("DATABASE_URL"))
	if err != nil {
		panic(err)
	}
	http.HandleFunc("/documents", documents(db))
}

// documents serves every document as NDJSON.
func documents(db *sql.DB) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rows, err := db.QueryContext(r.Context(), "SELECT data FROM documents ORDER BY id")
		if err != nil {
			log.Printf("documents: %v", err)
			http.Error(w, "query failed", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		// A client that stops reading fails a write after a minute; one that
		// leaves fails a write or ends r.Context(): either way the query stops.
		n, err := jsonstream.WriteNDJSON(r.Context(), w, rows, jsonstream.WithWriteTimeout(time.Minute))
		switch {
		case err == nil:
		case errors.Is(err, jsonstream.ErrClientGone), errors.Is(err, context.Canceled):
			log.Printf("documents: client left after %d documents: %v", n, err)
		case n == 0:
			// Nothing was written: the status can still say so.
			log.Printf("documents: %v", err)
			http.Error(w, "query failed", http.StatusInternalServerError)
		default:
			// The client gets the trailer "Jsonstream-Status: failed".
			log.Printf("documents: failed after %d documents: %v", n, err)
		}
	}
}

// integrationSection is the README section whose Go blocks use
// third-party libraries: they are compiled (and run) in the integration
// module, which has them, and must stand in its test files.
const integrationSection = "## With sqlc, sqlx, GORM and OpenTelemetry"

// TestReadmeCodeBlocks requires every Go block of README.md and
// jsonstreamotel/README.md to stand, line for line (indentation aside), in a test
// file of this package or of the jsonstreamotel module (which compiles the blocks
// that use OpenTelemetry), or of the integration module for
// integrationSection, and every make target the README names to exist.
func TestReadmeCodeBlocks(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	otelReadme, err := os.ReadFile(filepath.Join("jsonstreamotel", "README.md"))
	require.NoError(t, err)
	corpus := func(globs ...string) string {
		var lines []string
		for _, glob := range globs {
			sources, err := filepath.Glob(glob)
			require.NoError(t, err)
			require.NotEmpty(t, sources, glob)
			for _, f := range sources {
				b, err := os.ReadFile(f)
				require.NoError(t, err)
				lines = append(lines, normalize(string(b))...)
			}
		}
		return "\n" + strings.Join(lines, "\n") + "\n"
	}
	root := corpus("*_test.go", filepath.Join("jsonstreamotel", "*_test.go"))
	integration := corpus(filepath.Join("integration", "*_test.go"))

	goBlock := regexp.MustCompile("(?s)```go\n(.*?)```")
	require.Contains(t, string(readme), "\n"+integrationSection+"\n")
	inIntegration := 0
	sections := regexp.MustCompile(`(?m)^## `).Split(string(readme), -1)
	for _, section := range append(sections, string(otelReadme)) {
		joined, where := root, "this package or the jsonstreamotel module"
		if strings.HasPrefix("## "+section, integrationSection+"\n") {
			joined, where = integration, "the integration module"
		}
		for _, b := range goBlock.FindAllStringSubmatch(section, -1) {
			lines := normalize(b[1])
			require.True(t, strings.Contains(joined, "\n"+strings.Join(lines, "\n")+"\n"), "a README Go block is not in a test file of %s:\n%s", where, b[1])
			if where == "the integration module" {
				inIntegration++
			}
		}
	}
	require.Equal(t, 4, inIntegration, "one block each for sqlc, sqlx, GORM and otelsql")

	makefile, err := os.ReadFile("Makefile")
	require.NoError(t, err)
	for _, m := range regexp.MustCompile(`(?m)^\s*make ([a-z-]+)`).FindAllStringSubmatch(string(readme), -1) {
		require.Regexp(t, "(?m)^"+m[1]+":", string(makefile), "the README names make %s", m[1])
	}
}

// normalize returns the non-blank lines of s without their indentation.
func normalize(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			out = append(out, line)
		}
	}
	return out
}
