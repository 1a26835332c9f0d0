package duties_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes/fake"

	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/duties"
	"github.com/stickyvol/stickyvol/internal/fixtures"
)

// One candidate leads at a time; when it stops, the other takes over, and
// the duty of the first has returned before that.
func TestRunLeaderElected(t *testing.T) {
	client := fake.NewClientset()
	var leading atomic.Int32
	var overlaps atomic.Int32
	start := func(id string, ran chan<- string) context.CancelFunc {
		ctx, cancel := context.WithCancel(fixtures.Context(t, 2))
		done := make(chan error, 1)
		go func() {
			done <- duties.RunLeaderElected(ctx, duties.LeaderConfig{
				Client: client, Namespace: stickyvolNamespace, Name: driver.Name, Identity: id,
				LeaseDuration: 2 * time.Second, RenewDeadline: time.Second, RetryPeriod: 100 * time.Millisecond,
			}, func(ctx context.Context) {
				if leading.Add(1) > 1 {
					overlaps.Add(1)
				}
				ran <- id
				<-ctx.Done()
				// A duty takes a while to stop (a last API call in
				// flight): the next leader must not start before.
				time.Sleep(300 * time.Millisecond)
				leading.Add(-1)
			})
		}()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%s: %v", id, err)
			}
		})
		return cancel
	}
	ran := make(chan string, 4)
	stopA := start("node-a", ran)
	if first := <-ran; first != "node-a" {
		t.Fatalf("first leader %s", first)
	}
	start("node-b", ran)
	stopA()
	select {
	case next := <-ran:
		if next != "node-b" {
			t.Errorf("next leader %s, want node-b", next)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("node-b did not take over")
	}
	if overlaps.Load() != 0 {
		t.Error("two duties ran at once")
	}
}
