package driver

import (
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestDirSyncGroupCommit runs many callers of one dirSync at once and
// checks the promise, that each returns only after an fsync that began
// after its change, and the point, that they share far fewer fsyncs.
func TestDirSyncGroupCommit(t *testing.T) {
	root := filepath.Join(t.TempDir(), "data")
	s := openTestStore(t, root)
	d := newDirSync(s.root, metaDir)
	var (
		changes atomic.Int64 // changes made by callers, numbered from 1
		durable atomic.Int64 // all changes up to this one are durable
		fsyncs  atomic.Int64
	)
	d.fsync = func() error {
		fsyncs.Add(1)
		covered := changes.Load()
		time.Sleep(5 * time.Millisecond) // a slow disk
		durable.Store(max(durable.Load(), covered))
		return nil
	}
	const callers = 64
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			change := changes.Add(1)
			if err := d.sync(); err != nil {
				t.Error(err)
			}
			if got := durable.Load(); got < change {
				t.Errorf("sync returned for change %d while only changes up to %d were durable", change, got)
			}
		})
	}
	wg.Wait()
	if n := fsyncs.Load(); n >= callers/2 {
		t.Errorf("%d callers took %d fsyncs, want them to share", callers, n)
	}
	t.Logf("%d callers, %d fsyncs", callers, fsyncs.Load())
}

// TestDirSyncFailureSticks checks that once an fsync has failed, no later
// sync reports success, and that the store's health check says so.
func TestDirSyncFailureSticks(t *testing.T) {
	root := filepath.Join(t.TempDir(), "data")
	s := openTestStore(t, root)
	errDisk := errors.New("I/O error")
	fail := true
	s.metaSync.fsync = func() error {
		if fail {
			fail = false
			return errDisk
		}
		return nil
	}
	spec := volumeSpec{ID: "vol", Size: 1 << 20, Params: volumeParams{DirectoryMode: 0o770}}
	if _, err := s.create(spec); !errors.Is(err, errDisk) {
		t.Errorf("create with a failing fsync: %v, want the fsync's error", err)
	}
	if _, err := s.create(spec); !errors.Is(err, errDisk) {
		t.Errorf("create after a failed fsync: %v, want the first error again", err)
	}
	if err := s.check(); !errors.Is(err, errDisk) {
		t.Errorf("check after a failed fsync: %v, want the error", err)
	}
	// A restart reads the data root afresh: nothing of the failed creates
	// is served or left.
	_ = s.close()
	wantVolumes(t, openTestStore(t, root), root, false)
}
