package deploy_test

import (
	"encoding/json"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"
)

var volumeSnapshotClassKind = schema.GroupVersionKind{Group: "snapshot.storage.k8s.io", Version: "v1", Kind: "VolumeSnapshotClass"}

// volumeSnapshotClass is the external-snapshotter's VolumeSnapshotClass
// (snapshot.storage.k8s.io/v1, its Go type's field names), which client-go's
// scheme does not hold. It is decoded strictly too: a misspelt field fails
// the test.
type volumeSnapshotClass struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Driver            string            `json:"driver"`
	Parameters        map[string]string `json:"parameters,omitempty"`
	DeletionPolicy    string            `json:"deletionPolicy"`
}

func (c *volumeSnapshotClass) DeepCopyObject() runtime.Object {
	data, err := json.Marshal(c)
	if err != nil {
		panic(err)
	}
	var cp volumeSnapshotClass
	if err := json.Unmarshal(data, &cp); err != nil {
		panic(err)
	}
	return &cp
}

func decodeVolumeSnapshotClass(t *testing.T, where string, doc []byte) *volumeSnapshotClass {
	t.Helper()
	var c volumeSnapshotClass
	if err := yaml.UnmarshalStrict(doc, &c); err != nil {
		t.Fatalf("%s: not a valid VolumeSnapshotClass: %v", where, err)
	}
	return &c
}

// TestVolumeSnapshotClass checks the class a VolumeSnapshot of a stickyvol
// volume names, as deploy/snapshots ships it and the local overlay applies
// it.
func TestVolumeSnapshotClass(t *testing.T) {
	objs := render(t, "snapshots")
	if len(objs) != 1 {
		t.Fatalf("deploy/snapshots renders %d objects, want only the VolumeSnapshotClass", len(objs))
	}
	for _, dir := range []string{"snapshots", "overlays/local"} {
		c := get[*volumeSnapshotClass](t, render(t, dir), className)
		// The snapshot-controller hands a snapshot to the driver the
		// class names; another name and no agent ever takes it.
		if c.Driver != driverName {
			t.Errorf("%s: driver %q, want %q", dir, c.Driver, driverName)
		}
		if c.DeletionPolicy != "Delete" {
			t.Errorf("%s: deletionPolicy %q, want Delete: a snapshot's data goes with it", dir, c.DeletionPolicy)
		}
		if c.Labels["app.kubernetes.io/part-of"] != "stickyvol" {
			t.Errorf("%s: labels %v, want app.kubernetes.io/part-of=stickyvol like the base's objects", dir, c.Labels)
		}
	}
}
