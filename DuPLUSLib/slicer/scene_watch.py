"""Cancel a background run when the scene it reads from closes (File > Close Scene)."""

from __future__ import annotations

__all__ = ["CancelOnSceneClose"]


class CancelOnSceneClose:
    """Mixed into the Segment and Prognosis logics, which provide ``isBusy`` and ``cancel``: a run
    whose input scene closes is cancelled, so nothing is imported into a scene that is gone."""

    _sceneWatch: tuple | None = None

    def _watchScene(self, scene) -> None:
        self._unwatchScene()
        if scene is not None:
            self._sceneWatch = (scene, scene.AddObserver(scene.StartCloseEvent, self._onSceneStartClose))

    def _unwatchScene(self) -> None:
        if self._sceneWatch is not None:
            scene, tag = self._sceneWatch
            self._sceneWatch = None
            scene.RemoveObserver(tag)

    def _onSceneStartClose(self, caller=None, event=None) -> None:
        if self.isBusy:
            self.cancel()
