package framework

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

func repoDir(t *testing.T) string {
	t.Helper()
	dir, err := RepoDir(".")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestRepoDir(t *testing.T) {
	dir := repoDir(t)
	if _, err := os.Stat(filepath.Join(dir, LocalOverlay, "kustomization.yaml")); err != nil {
		t.Errorf("RepoDir(.) = %s, which holds no %s: %v", dir, LocalOverlay, err)
	}
	if got, err := RepoDir(t.TempDir()); err == nil {
		t.Errorf("RepoDir of a directory outside the tree = %s, want an error", got)
	}
}

// The agent's DaemonSet as Deploy applies it: the local overlay with the
// extra arguments and the image annotation, nothing else changed.
func TestCustomizeAgent(t *testing.T) {
	objs, err := Render(filepath.Join(repoDir(t), LocalOverlay))
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(objs, func(o *unstructured.Unstructured) bool {
		return o.GetKind() == "DaemonSet" && o.GetName() == DaemonSetName
	})
	if i < 0 {
		t.Fatalf("no DaemonSet %s in %s", DaemonSetName, LocalOverlay)
	}
	rendered := objs[i].DeepCopy()
	cfg := DeployConfig{Image: Image{Digest: "sha256:0123"}, AgentArgs: []string{"--capacity=1Gi"}}
	got, err := customizeAgent(objs[i], cfg)
	if err != nil {
		t.Fatal(err)
	}
	var before, after appsv1.DaemonSet
	for _, x := range []struct {
		obj *unstructured.Unstructured
		ds  *appsv1.DaemonSet
	}{{rendered, &before}, {got, &after}} {
		if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(x.obj.Object, x.ds, true); err != nil {
			t.Fatal(err)
		}
	}
	wantArgs := append(slices.Clone(before.Spec.Template.Spec.Containers[0].Args), "--capacity=1Gi")
	if args := after.Spec.Template.Spec.Containers[0].Args; !slices.Equal(args, wantArgs) {
		t.Errorf("args = %q, want %q", args, wantArgs)
	}
	if a := after.Spec.Template.Annotations[annImage]; a != "sha256:0123" {
		t.Errorf("pod template annotation %s = %q, want the image digest", annImage, a)
	}
	// Everything else as rendered.
	after.Spec.Template.Spec.Containers[0].Args = before.Spec.Template.Spec.Containers[0].Args
	delete(after.Spec.Template.Annotations, annImage)
	if len(after.Spec.Template.Annotations) == 0 {
		after.Spec.Template.Annotations = before.Spec.Template.Annotations
	}
	if !equality.Semantic.DeepEqual(before, after) {
		t.Errorf("customizeAgent changed more than the args and the annotation")
	}
	if !reflect.DeepEqual(rendered.Object, objs[i].Object) {
		t.Errorf("customizeAgent changed the rendered object it was given")
	}
}

func TestReadManifests(t *testing.T) {
	for file, want := range map[string][]string{
		ExampleWebFile:                     {"Service/web", "StatefulSet/web"},
		"deploy/examples/claims/rwop.yaml": {"PersistentVolumeClaim/single-writer", "Pod/single-writer-a", "Pod/single-writer-b"},
	} {
		objs, err := ReadManifests(filepath.Join(repoDir(t), file))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, o := range objs {
			got = append(got, o.GetKind()+"/"+o.GetName())
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: objects %v, want %v", file, got, want)
		}
	}
}
