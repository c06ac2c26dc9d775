package integration

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/jsonstream/jsonstream"
)

// Document is the GORM model of the documents table.
type Document struct {
	ID   int64
	Kind string
	Data json.RawMessage `gorm:"type:jsonb"`
}

// openGorm puts GORM on a jsonstream *sql.DB.
func openGorm(t *testing.T) (*gorm.DB, *sql.DB) {
	t.Helper()
	db := openJSONStream(t)
	gdb, err := gorm.Open(postgres.New(postgres.Config{Conn: db}), &gorm.Config{Logger: logger.Discard})
	require.NoError(t, err)
	return gdb, db
}

func TestGORM(t *testing.T) {
	gdb, db := openGorm(t)
	bg := context.Background()
	ids := func(ctx context.Context) *gorm.DB {
		return gdb.WithContext(ctx).Model(&Document{}).Select("id").Where("kind = ?", "a").Order("id")
	}

	t.Run("Rows paused and resumed", func(t *testing.T) {
		s := newStream(t)
		rows, err := ids(jsonstream.ContextWithStream(bg, s)).Rows()
		require.NoError(t, err)
		pauseAndResume(t, s, rows)
	})
	t.Run("Rows canceled", func(t *testing.T) {
		s := newStream(t)
		rows, err := ids(jsonstream.ContextWithStream(bg, s)).Rows()
		require.NoError(t, err)
		cancelPaused(t, s, rows)
	})
	t.Run("Rows closed early", func(t *testing.T) {
		pid := backendPID(t, db)
		s := newStream(t, jsonstream.WithCloseMode(jsonstream.CloseCut))
		rows, err := ids(jsonstream.ContextWithStream(bg, s)).Rows()
		require.NoError(t, err)
		closeEarly(t, s, rows, pid, func() int { return backendPID(t, db) }, true)
	})
	t.Run("ScanRows and the JSON helpers", func(t *testing.T) {
		s := newStream(t)
		rows, err := gdb.WithContext(jsonstream.ContextWithStream(bg, s)).Model(&Document{}).Where("kind = ?", "b").Order("id").Rows()
		require.NoError(t, err)
		var docs []Document
		for rows.Next() {
			var d Document
			require.NoError(t, gdb.ScanRows(rows, &d))
			docs = append(docs, d)
		}
		require.NoError(t, rows.Close())
		require.Len(t, docs, 3)
		assert.JSONEq(t, `{"id": 100003}`, string(docs[2].Data))

		s = newStream(t)
		rows, err = gdb.WithContext(jsonstream.ContextWithStream(bg, s)).Model(&Document{}).Select("data").Where("kind = ?", "a").Order("id").Rows()
		require.NoError(t, err)
		var out bytes.Buffer
		n, err := jsonstream.WriteNDJSON(bg, &out, rows)
		require.NoError(t, err)
		assert.Equal(t, int64(totalA), n)
		assert.Equal(t, totalA, strings.Count(out.String(), "\n"))
		assert.Equal(t, jsonstream.Complete, s.State())
	})
	t.Run("FindInBatches with context options: every batch", func(t *testing.T) {
		ctx, err := jsonstream.ContextWithOptions(bg, jsonstream.WithCloseMode(jsonstream.CloseDrain))
		require.NoError(t, err)
		var batch []Document
		var seen []int64
		batches := 0
		res := gdb.WithContext(ctx).Where("kind = ?", "a").FindInBatches(&batch, 500, func(_ *gorm.DB, _ int) error {
			batches++
			for _, d := range batch {
				seen = append(seen, d.ID)
			}
			return nil
		})
		require.NoError(t, res.Error)
		assert.Equal(t, 4, batches)
		requireEveryIDOnce(t, seen)
	})
	t.Run("FindInBatches with a context Stream: the second batch is refused", func(t *testing.T) {
		s := newStream(t)
		var batch []Document
		batches := 0
		res := gdb.WithContext(jsonstream.ContextWithStream(bg, s)).Where("kind = ?", "a").FindInBatches(&batch, 500, func(*gorm.DB, int) error {
			batches++
			return nil
		})
		require.ErrorIs(t, res.Error, jsonstream.ErrStreamArgument)
		assert.Equal(t, 1, batches)
		assert.Equal(t, int64(500), s.Stats().Rows, "the Stream served the first batch")
	})
}
