package jsonstream

import (
	"bufio"
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestContextOptionsApplyToEveryQueryPG: options in a context reach
// queries that have no Stream at all. QueryRow leaves rows unread:
// CloseAuto drains two and keeps the connection; CloseCut from the
// context cuts it after every query of the context whose rest had not
// all arrived (a million rows).
func TestContextOptionsApplyToEveryQueryPG(t *testing.T) {
	db := openPG(t, DriverName, "")
	db.SetMaxOpenConns(1)
	bg := context.Background()
	pid := func(ctx context.Context, rows int) int {
		var p int
		require.NoError(t, db.QueryRowContext(ctx, "SELECT pg_backend_pid() FROM generate_series(1, $1)", rows).Scan(&p))
		return p
	}
	first := pid(bg, 3)
	require.Equal(t, first, pid(bg, 3), "CloseAuto kept the connection")
	cutMode, err := ContextWithOptions(bg, WithCloseMode(CloseCut))
	require.NoError(t, err)
	// Each query reports the connection it ran on; the cut on its Close
	// sends the next one to a new connection.
	pids := []int{pid(cutMode, 1_000_000), pid(cutMode, 1_000_000), pid(cutMode, 1_000_000), pid(bg, 3)}
	assert.Equal(t, first, pids[0])
	for i := 1; i < len(pids); i++ {
		assert.NotEqual(t, pids[i-1], pids[i], "query %d: the context's CloseCut did not cut the connection", i-1)
	}
	assert.Equal(t, pids[3], pid(bg, 3), "without the context, CloseAuto keeps the connection again")
}

// TestJSONHelpersWithContextStreamPG: the JSON helpers on rows whose Stream
// came through the context: a pause inside ForEach holds the next
// document, WriteNDJSON writes every one, Cancel ends Each.
func TestJSONHelpersWithContextStreamPG(t *testing.T) {
	db := jsonPG(t)
	bg := context.Background()
	const n = 200

	t.Run("ForEach", func(t *testing.T) {
		s := mustStream(t)
		rows, err := db.QueryContext(ContextWithStream(bg, s), jsonDocsQuery, n, 10)
		require.NoError(t, err)
		var ids []int
		var resumedAt time.Time
		var gap time.Duration
		err = ForEach(rows, func(d jsonPadItem) error {
			ids = append(ids, d.ID)
			switch d.ID {
			case 10:
				require.NoError(t, s.Pause())
				time.AfterFunc(quiet, func() {
					resumedAt = time.Now()
					assert.Equal(t, int64(10), s.Stats().Rows, "a row was delivered while paused")
					_ = s.Resume()
				})
			case 11:
				gap = time.Since(resumedAt)
			}
			return nil
		})
		require.NoError(t, err)
		require.Len(t, ids, n)
		for i, id := range ids {
			require.Equal(t, i+1, id)
		}
		assert.False(t, resumedAt.IsZero())
		assert.Less(t, gap, time.Second, "document 11 came long after Resume")
		assert.Equal(t, Complete, s.State())
		assert.Equal(t, int64(1), s.Stats().Pauses)
	})
	t.Run("WriteNDJSON", func(t *testing.T) {
		s := mustStream(t)
		rows, err := db.QueryContext(ContextWithStream(bg, s), jsonDocsQuery, n, 10)
		require.NoError(t, err)
		var buf bytes.Buffer
		written, err := WriteNDJSON(bg, &buf, rows)
		require.NoError(t, err)
		assert.Equal(t, int64(n), written)
		lines := 0
		sc := bufio.NewScanner(&buf)
		for sc.Scan() {
			lines++
		}
		assert.Equal(t, n, lines)
		assert.Equal(t, Complete, s.State())
		assert.Equal(t, int64(n), s.Stats().Rows)
	})
	t.Run("Each, canceled", func(t *testing.T) {
		s := mustStream(t)
		rows, err := db.QueryContext(ContextWithStream(bg, s), jsonDocsQuery, 100_000, 10)
		require.NoError(t, err)
		defer rows.Close()
		seen := 0
		var last error
		for _, err := range Each[jsonPadItem](rows) {
			if err != nil {
				last = err
				break
			}
			if seen++; seen == 5 {
				require.NoError(t, s.Cancel())
			}
		}
		assert.ErrorIs(t, last, ErrCanceled)
		assert.Equal(t, 5, seen)
		assert.Equal(t, Failed, s.State())
	})
}
