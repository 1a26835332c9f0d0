package deploy_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	snapscheme "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned/scheme"
	"io"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"os"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// object is what every typed Kubernetes object is.
type object interface {
	runtime.Object
	metav1.Object
}

// strict decodes YAML into client-go's typed objects, and the snapshot
// API's, and fails on unknown or duplicate fields: a misspelt field
// (mountPropogation) would otherwise be dropped without a word, by this test
// and by the API server alike.
var strict = func() runtime.Decoder {
	s := runtime.NewScheme()
	utilruntime.Must(scheme.AddToScheme(s))
	utilruntime.Must(snapscheme.AddToScheme(s))
	return serializer.NewCodecFactory(s, serializer.EnableStrict).UniversalDeserializer()
}()

// render builds a kustomization directory as `kubectl apply -k dir` does and
// decodes every object it yields.
func render(t *testing.T, dir string) []object {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resources, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	var objs []object
	for _, r := range resources.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatalf("kustomize %s: %s: %v", dir, r.CurId(), err)
		}
		objs = append(objs, decode(t, fmt.Sprintf("%s: %s", dir, r.CurId()), y))
	}
	return objs
}

// decodeFile decodes every document of a YAML file, as `kubectl apply -f` reads it.
func decodeFile(t *testing.T, path string) []object {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []object
	for i := 0; ; i++ {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: document %d: %v", path, i, err)
		}
		var fields map[string]any
		if err := yaml.Unmarshal(doc, &fields); err != nil {
			t.Fatalf("%s: document %d: %v", path, i, err)
		}
		if len(fields) == 0 { // only comments, or "---" at the end
			continue
		}
		objs = append(objs, decode(t, fmt.Sprintf("%s: document %d", path, i), doc))
	}
	if len(objs) == 0 {
		t.Fatalf("%s holds no objects", path)
	}
	return objs
}

func decode(t *testing.T, where string, y []byte) object {
	t.Helper()
	obj, gvk, err := strict.Decode(y, nil, nil)
	if err != nil {
		t.Fatalf("%s: not a valid typed object: %v", where, err)
	}
	o, ok := obj.(object)
	if !ok {
		t.Fatalf("%s: %v has no object metadata", where, gvk)
	}
	return o
}

// get returns the one object of type T named name; namespace is not looked
// at because every name used here is unique per kind.
func get[T object](t *testing.T, objs []object, name string) T {
	t.Helper()
	var found []T
	for _, o := range objs {
		if typed, ok := o.(T); ok && o.GetName() == name {
			found = append(found, typed)
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("want exactly one %T named %q, found %d", zero, name, len(found))
	}
	return found[0]
}

// all returns every object of type T.
func all[T object](objs []object) []T {
	var found []T
	for _, o := range objs {
		if typed, ok := o.(T); ok {
			found = append(found, typed)
		}
	}
	return found
}
