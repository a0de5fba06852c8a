"""The model panel.

Which model runs (embedded default, a local GGUF file, or one downloaded from
Hugging Face with progress, speed, cancel and resume), how it runs (GPU
offload and layers, ``n_ctx``, attention sinks, RoPE scaling), and how it is
doing (tokens/s, time to first token, and the context gauge of the sink-style
rolling KV cache). Everything goes through a
:class:`~app.controllers.model_controller.ModelController`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from app.controllers.model_controller import DownloadProgress, ModelController
from app.qt import Qt, QtCore, QtGui, QtWidgets, Slot
from app.settings import ModelSettings
from app.widgets.banner import Banner
from app.widgets.context_gauge import ContextGauge, GaugeState

ROPE_KINDS = (
    ("none", "None (the model's own positions)"),
    ("linear", "Linear (Positional Interpolation)"),
    ("yarn", "YaRN"),
)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class ModelView(QtWidgets.QWidget):
    """The model screen.

    Args:
        controller: Owns the model choice, downloads and live figures.
        parent: The Qt parent.
    """

    def __init__(
        self, controller: ModelController, parent: QtWidgets.QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.controller = controller
        self._probed = False
        self.setObjectName("modelView")
        self.banner = Banner()

        # -- which model ---------------------------------------------------------------
        source_box = QtWidgets.QGroupBox("Model in use")
        self.model_name = QtWidgets.QLabel("…")
        self.model_name.setObjectName("modelName")
        font = self.model_name.font()
        font.setBold(True)
        self.model_name.setFont(font)
        self.model_detail = QtWidgets.QLabel("")
        self.model_detail.setObjectName("modelDetail")
        self.model_detail.setWordWrap(True)
        self.model_detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.embedded_radio = QtWidgets.QRadioButton(
            "&Embedded default (SmolLM2-135M, no download)"
        )
        self.embedded_radio.setObjectName("useEmbedded")
        self.local_radio = QtWidgets.QRadioButton("&Local GGUF file:")
        self.local_radio.setObjectName("useLocal")
        self.local_path = QtWidgets.QLineEdit()
        self.local_path.setObjectName("localPath")
        self.local_path.setAccessibleName("Local model file path")
        self.local_path.setPlaceholderText("/path/to/model.gguf")
        self.pick_button = QtWidgets.QPushButton("Choose &file…")
        self.pick_button.setObjectName("pickModelFile")
        self.use_button = QtWidgets.QPushButton("&Use this model")
        self.use_button.setObjectName("useModel")
        self.remote_radio = QtWidgets.QRadioButton("Remote &OpenAI-compatible server:")
        self.remote_radio.setObjectName("useRemote")
        self.remote_url = QtWidgets.QLineEdit()
        self.remote_url.setObjectName("remoteUrl")
        self.remote_url.setAccessibleName("Server base URL")
        self.remote_url.setPlaceholderText("https://api.example.com/v1")
        self.remote_model = QtWidgets.QLineEdit()
        self.remote_model.setObjectName("remoteModel")
        self.remote_model.setAccessibleName("Model name on the server")
        self.remote_model.setPlaceholderText("the model's name, e.g. qwen2.5-7b-instruct")
        # The key is named, never typed here: it lives in the vault.
        self.remote_key = QtWidgets.QComboBox()
        self.remote_key.setObjectName("remoteKeySecret")
        self.remote_key.setEditable(True)
        self.remote_key.setAccessibleName("Vault secret holding the API key")
        key_edit = self.remote_key.lineEdit()
        assert key_edit is not None  # editable combo boxes have one
        key_edit.setPlaceholderText("vault secret name (empty: no key)")
        self.remote_key.setToolTip(
            "The name of the vault secret that holds the API key. The key stays in the "
            "vault; the host reads it for each request and never shows it to the agent."
        )
        self.remote_local = QtWidgets.QCheckBox("Allow a server on this machine or the LAN")
        self.remote_local.setObjectName("remoteAllowLocal")
        self.remote_form = QtWidgets.QWidget()
        remote_form = QtWidgets.QFormLayout(self.remote_form)
        remote_form.setContentsMargins(24, 0, 0, 0)
        remote_form.addRow("Base &URL:", self.remote_url)
        remote_form.addRow("&Model name:", self.remote_model)
        remote_form.addRow("API &key (vault):", self.remote_key)
        remote_form.addRow(self.remote_local)
        source_group = QtWidgets.QButtonGroup(self)
        source_group.addButton(self.embedded_radio)
        source_group.addButton(self.local_radio)
        source_group.addButton(self.remote_radio)
        local_row = QtWidgets.QHBoxLayout()
        local_row.addWidget(self.local_radio)
        local_row.addWidget(self.local_path, 1)
        local_row.addWidget(self.pick_button)

        source_layout = QtWidgets.QVBoxLayout(source_box)
        source_layout.addWidget(self.model_name)
        source_layout.addWidget(self.model_detail)
        source_layout.addWidget(self.embedded_radio)
        source_layout.addLayout(local_row)
        source_layout.addWidget(self.remote_radio)
        source_layout.addWidget(self.remote_form)
        use_row = QtWidgets.QHBoxLayout()
        use_row.addStretch(1)
        use_row.addWidget(self.use_button)
        source_layout.addLayout(use_row)

        # -- the curated catalog ----------------------------------------------------------
        catalog_box = QtWidgets.QGroupBox("Recommended models")
        self.demo_note = QtWidgets.QLabel(
            "The embedded model is a 135M-parameter demo: it shows how Keyless works but "
            "cannot do real errands. Pick a larger model below."
        )
        self.demo_note.setObjectName("demoNote")
        self.demo_note.setWordWrap(True)
        self.catalog_table = QtWidgets.QTableWidget(0, 4)
        self.catalog_table.setObjectName("catalogTable")
        self.catalog_table.setAccessibleName("Recommended models")
        self.catalog_table.setHorizontalHeaderLabels(["Model", "Download", "This machine", "Runs"])
        self.catalog_table.setSelectionBehavior(
            QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows
        )
        self.catalog_table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.catalog_table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.catalog_table.verticalHeader().setVisible(False)
        header = self.catalog_table.horizontalHeader()
        header.setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.catalog_table.setMinimumHeight(150)
        self.catalog_download_button = QtWidgets.QPushButton("Download and &use")
        self.catalog_download_button.setObjectName("catalogDownload")
        self.catalog_download_button.setEnabled(False)
        self.installed_list = QtWidgets.QListWidget()
        self.installed_list.setObjectName("installedModels")
        self.installed_list.setAccessibleName("Installed models")
        self.installed_list.setMaximumHeight(80)
        self.installed_use_button = QtWidgets.QPushButton("Us&e")
        self.installed_use_button.setObjectName("useInstalled")
        self.installed_remove_button = QtWidgets.QPushButton("&Remove")
        self.installed_remove_button.setObjectName("removeInstalled")
        catalog_buttons = QtWidgets.QHBoxLayout()
        catalog_buttons.addStretch(1)
        catalog_buttons.addWidget(self.catalog_download_button)
        installed_row = QtWidgets.QHBoxLayout()
        installed_row.addWidget(self.installed_list, 1)
        installed_buttons = QtWidgets.QVBoxLayout()
        installed_buttons.addWidget(self.installed_use_button)
        installed_buttons.addWidget(self.installed_remove_button)
        installed_buttons.addStretch(1)
        installed_row.addLayout(installed_buttons)
        catalog_layout = QtWidgets.QVBoxLayout(catalog_box)
        catalog_layout.addWidget(self.demo_note)
        catalog_layout.addWidget(self.catalog_table, 1)
        catalog_layout.addLayout(catalog_buttons)
        catalog_layout.addWidget(QtWidgets.QLabel("Installed:"))
        catalog_layout.addLayout(installed_row)

        # -- Hugging Face download ------------------------------------------------------
        hf_box = QtWidgets.QGroupBox("Download from Hugging Face")
        self.repo_edit = QtWidgets.QLineEdit()
        self.repo_edit.setObjectName("hfRepo")
        self.repo_edit.setPlaceholderText("owner/name, e.g. bartowski/SmolLM2-360M-Instruct-GGUF")
        self.repo_edit.setAccessibleName("Hugging Face repository")
        self.file_edit = QtWidgets.QLineEdit()
        self.file_edit.setObjectName("hfFile")
        self.file_edit.setPlaceholderText("file name ending in .gguf")
        self.file_edit.setAccessibleName("File in the repository")
        self.sha_edit = QtWidgets.QLineEdit()
        self.sha_edit.setObjectName("hfSha256")
        self.sha_edit.setPlaceholderText("optional; the hub's own digest is checked otherwise")
        self.sha_edit.setAccessibleName("Expected sha256")
        self.download_button = QtWidgets.QPushButton("&Download")
        self.download_button.setObjectName("download")
        self.cancel_download_button = QtWidgets.QPushButton("&Cancel download")
        self.cancel_download_button.setObjectName("cancelDownload")
        self.cancel_download_button.setEnabled(False)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setObjectName("downloadProgress")
        self.progress.setAccessibleName("Download progress")
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.progress.setFormat("no download running")
        self.speed_label = QtWidgets.QLabel("")
        self.speed_label.setObjectName("downloadSpeed")
        hf_form = QtWidgets.QFormLayout()
        hf_form.addRow("&Repository:", self.repo_edit)
        hf_form.addRow("F&ile:", self.file_edit)
        hf_form.addRow("s&ha256:", self.sha_edit)
        hf_buttons = QtWidgets.QHBoxLayout()
        hf_buttons.addWidget(self.progress, 1)
        hf_buttons.addWidget(self.download_button)
        hf_buttons.addWidget(self.cancel_download_button)
        hf_layout = QtWidgets.QVBoxLayout(hf_box)
        hf_layout.addLayout(hf_form)
        hf_layout.addLayout(hf_buttons)
        hf_layout.addWidget(self.speed_label)

        # -- runtime options -----------------------------------------------------------
        runtime_box = QtWidgets.QGroupBox("Runtime (applies to the next errand)")
        self.gpu_label = QtWidgets.QLabel("GPU offload: checking…")
        self.gpu_label.setObjectName("gpuState")
        self.gpu_label.setWordWrap(True)
        self.gpu_label.setMinimumWidth(200)
        self.offload_label = QtWidgets.QLabel("Offload: measuring free memory…")
        self.offload_label.setObjectName("offloadPlan")
        self.offload_label.setWordWrap(True)
        self.gpu_auto = QtWidgets.QCheckBox("&Automatic GPU layers")
        self.gpu_auto.setObjectName("gpuAuto")
        self.gpu_layers = QtWidgets.QSpinBox()
        self.gpu_layers.setObjectName("gpuLayers")
        self.gpu_layers.setRange(0, 999)
        self.gpu_layers.setAccessibleName("GPU layers")
        self.gpu_layers.setToolTip("Layers to offload to the GPU; 0 keeps everything on the CPU.")
        self.n_ctx = QtWidgets.QSpinBox()
        self.n_ctx.setObjectName("nCtx")
        self.n_ctx.setRange(256, 1_048_576)
        self.n_ctx.setSingleStep(256)
        self.n_ctx.setAccessibleName("Context size in tokens")
        self.n_sink = QtWidgets.QSpinBox()
        self.n_sink.setObjectName("nSink")
        self.n_sink.setRange(0, 256)
        self.n_sink.setAccessibleName("Attention sink tokens")
        self.n_sink.setToolTip(
            "Tokens at the start of the cache that are never evicted (StreamingLLM's "
            "attention sinks); 4 is the usual choice."
        )
        self.rope_combo = QtWidgets.QComboBox()
        self.rope_combo.setObjectName("ropeScaling")
        self.rope_combo.setAccessibleName("RoPE scaling")
        for value, label in ROPE_KINDS:
            self.rope_combo.addItem(label, value)
        self.rope_combo.setSizeAdjustPolicy(
            QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.rope_combo.setMinimumContentsLength(10)
        self.rope_factor = QtWidgets.QDoubleSpinBox()
        self.rope_factor.setObjectName("ropeFactor")
        self.rope_factor.setRange(1.0, 64.0)
        self.rope_factor.setSingleStep(0.5)
        self.rope_factor.setDecimals(2)
        self.rope_factor.setAccessibleName("RoPE scaling factor")
        self.n_threads = QtWidgets.QSpinBox()
        self.n_threads.setObjectName("nThreads")
        self.n_threads.setRange(0, 1024)
        self.n_threads.setSpecialValueText("automatic")
        self.n_threads.setAccessibleName("CPU threads")
        self.n_threads.setToolTip("CPU threads for generation; automatic uses every core allowed.")
        self.loaded_label = QtWidgets.QLabel("Loaded: no model loaded yet")
        self.loaded_label.setObjectName("loadedOffload")
        self.loaded_label.setWordWrap(True)
        self.apply_button = QtWidgets.QPushButton("A&pply")
        self.apply_button.setObjectName("applyRuntime")
        gpu_row = QtWidgets.QHBoxLayout()
        gpu_row.addWidget(self.gpu_layers)
        gpu_row.addWidget(self.gpu_auto)
        gpu_row.addStretch(1)
        rope_row = QtWidgets.QHBoxLayout()
        rope_row.addWidget(self.rope_combo, 1)
        factor_label = QtWidgets.QLabel("&factor")
        factor_label.setBuddy(self.rope_factor)
        rope_row.addWidget(factor_label)
        rope_row.addWidget(self.rope_factor)
        runtime_form = QtWidgets.QFormLayout(runtime_box)
        runtime_form.addRow(self.gpu_label)
        runtime_form.addRow(self.offload_label)
        runtime_form.addRow(self.loaded_label)
        gpu_layers_label = QtWidgets.QLabel("&GPU layers:")
        gpu_layers_label.setBuddy(self.gpu_layers)
        runtime_form.addRow(gpu_layers_label, gpu_row)
        n_ctx_label = QtWidgets.QLabel("Conte&xt (n_ctx):")
        n_ctx_label.setBuddy(self.n_ctx)
        runtime_form.addRow(n_ctx_label, self.n_ctx)
        sink_label = QtWidgets.QLabel("Attention si&nks:")
        sink_label.setBuddy(self.n_sink)
        runtime_form.addRow(sink_label, self.n_sink)
        rope_label = QtWidgets.QLabel("&RoPE scaling:")
        rope_label.setBuddy(self.rope_combo)
        runtime_form.addRow(rope_label, rope_row)
        threads_label = QtWidgets.QLabel("CPU &threads:")
        threads_label.setBuddy(self.n_threads)
        runtime_form.addRow(threads_label, self.n_threads)
        apply_row = QtWidgets.QHBoxLayout()
        apply_row.addStretch(1)
        apply_row.addWidget(self.apply_button)
        runtime_form.addRow(apply_row)

        # -- live figures --------------------------------------------------------------
        live_box = QtWidgets.QGroupBox("Live")
        self.tps_label = QtWidgets.QLabel("— tok/s")
        self.tps_label.setObjectName("tokensPerSecond")
        self.ttft_label = QtWidgets.QLabel("time to first token: —")
        self.ttft_label.setObjectName("timeToFirstToken")
        self.gauge = ContextGauge()
        self.gauge_text = QtWidgets.QLabel()
        self.gauge_text.setObjectName("gaugeText")
        self.gauge_text.setWordWrap(True)
        numbers = QtWidgets.QHBoxLayout()
        numbers.addWidget(self.tps_label)
        numbers.addSpacing(24)
        numbers.addWidget(self.ttft_label)
        numbers.addStretch(1)
        live_layout = QtWidgets.QVBoxLayout(live_box)
        live_layout.addLayout(numbers)
        gauge_label = QtWidgets.QLabel("Context (KV cache):")
        live_layout.addWidget(gauge_label)
        live_layout.addWidget(self.gauge)
        live_layout.addWidget(self.gauge_text)

        columns = QtWidgets.QHBoxLayout()
        left = QtWidgets.QVBoxLayout()
        left.addWidget(source_box)
        left.addWidget(catalog_box, 1)
        left.addWidget(hf_box)
        left.addStretch(1)
        right = QtWidgets.QVBoxLayout()
        right.addWidget(runtime_box)
        right.addWidget(live_box)
        right.addStretch(1)
        columns.addLayout(left, 1)
        columns.addLayout(right, 1)
        # Scrolls rather than overflow a small screen (the panel is taller than 800 px).
        content = QtWidgets.QWidget()
        content.setLayout(columns)
        scroll = QtWidgets.QScrollArea()
        scroll.setObjectName("modelScroll")
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        scroll.setWidget(content)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.banner)
        layout.addWidget(scroll, 1)

        order: list[QtWidgets.QWidget] = [
            self.embedded_radio,
            self.local_radio,
            self.local_path,
            self.pick_button,
            self.remote_radio,
            self.remote_url,
            self.remote_model,
            self.remote_key,
            self.remote_local,
            self.use_button,
            self.repo_edit,
            self.file_edit,
            self.sha_edit,
            self.download_button,
            self.cancel_download_button,
            self.gpu_layers,
            self.gpu_auto,
            self.n_ctx,
            self.n_sink,
            self.rope_combo,
            self.rope_factor,
            self.n_threads,
            self.apply_button,
            self.gauge,
        ]
        for first, second in zip(order, order[1:], strict=False):
            QtWidgets.QWidget.setTabOrder(first, second)

        self.pick_button.clicked.connect(self._pick_file)
        self.use_button.clicked.connect(self.use_selected)
        self.local_path.textEdited.connect(lambda _: self.local_radio.setChecked(True))
        for edit in (self.remote_url, self.remote_model):
            edit.textEdited.connect(lambda _: self.remote_radio.setChecked(True))
        self.download_button.clicked.connect(self._download)
        self.cancel_download_button.clicked.connect(controller.cancel_download)
        self.apply_button.clicked.connect(self.apply_runtime)
        self.gpu_auto.toggled.connect(lambda auto: self.gpu_layers.setEnabled(not auto))
        self.rope_combo.currentIndexChanged.connect(self._rope_changed)

        c = controller
        c.settingsChanged.connect(self._show_settings)
        c.modelDescribed.connect(self._on_described)
        c.gpuProbed.connect(self._on_gpu)
        c.downloadStarted.connect(self._on_download_started)
        c.downloadProgressed.connect(self._on_download_progress)
        c.downloadFinished.connect(self._on_download_finished)
        c.downloadCancelled.connect(self._on_download_stopped_info)
        c.downloadFailed.connect(self._on_download_failed)
        c.statsUpdated.connect(self._on_stats)
        c.contextUpdated.connect(self._on_context)
        c.errorOccurred.connect(lambda m: self.banner.show_message(m, "error"))
        c.catalogUpdated.connect(self._on_catalog)
        c.installedUpdated.connect(self._on_installed)
        c.offloadPlanned.connect(self.offload_label.setText)
        c.modelLoaded.connect(self.loaded_label.setText)
        c.downloadNotice.connect(lambda m: self.banner.show_message(m, "warning"))
        self.catalog_table.itemSelectionChanged.connect(
            lambda: self.catalog_download_button.setEnabled(
                bool(self.catalog_table.selectedItems()) and not c.downloading
            )
        )
        self.catalog_download_button.clicked.connect(self.download_selected)
        self.installed_use_button.clicked.connect(self._use_installed)
        self.installed_remove_button.clicked.connect(self._remove_installed)

        self._show_settings(controller.settings)
        self._on_context(controller.context)

    def showEvent(self, event: QtGui.QShowEvent) -> None:
        """Probe the GPU the first time the panel is shown."""
        if self.controller.gpu_supported is None and not self._probed:
            self._probed = True
            self.controller.probe_gpu()
            self.controller.probe_memory()
        self._offer_secret_names()
        super().showEvent(event)

    def _offer_secret_names(self) -> None:
        chosen = self.remote_key.currentText()
        self.remote_key.clear()
        self.remote_key.addItems(self.controller.vault_secret_names())
        self.remote_key.setEditText(chosen)

    # -- the curated catalog --------------------------------------------------------------

    def _on_catalog(self, rows: object) -> None:
        assert isinstance(rows, list)
        table = self.catalog_table
        table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            size = _human_bytes(row.size) + (" (estimate)" if row.size_estimated else "")
            fit = {"fits": "fits", "tight": "tight", "too big": "too big"}[row.fit]
            cells = [
                row.name + ("  ✓ installed" if row.installed else ""),
                size,
                fit,
                row.plan,
            ]
            for j, text in enumerate(cells):
                item = QtWidgets.QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, row.id)
                item.setToolTip(row.note)
                if j == 2:
                    color = {"fits": "#1b7a2e", "tight": "#8a5a00", "too big": "#b00020"}[row.fit]
                    item.setForeground(QtGui.QColor(color))
                table.setItem(i, j, item)

    def _on_installed(self, found: object) -> None:
        assert isinstance(found, list)
        self.installed_list.clear()
        for m in found:
            item = QtWidgets.QListWidgetItem(f"{m.name} · {_human_bytes(m.size)}")
            item.setData(Qt.ItemDataRole.UserRole, str(m.path))
            self.installed_list.addItem(item)
        self.installed_use_button.setEnabled(bool(found))
        self.installed_remove_button.setEnabled(bool(found))

    def download_selected(self) -> None:
        """Download the selected catalog model and switch to it."""
        items = self.catalog_table.selectedItems()
        if items:
            self.controller.download_catalog(str(items[0].data(Qt.ItemDataRole.UserRole)))

    def _selected_installed(self) -> str | None:
        item = self.installed_list.currentItem()
        return str(item.data(Qt.ItemDataRole.UserRole)) if item else None

    def _use_installed(self) -> None:
        path = self._selected_installed()
        if path:
            self.controller.use_installed(path)

    def _remove_installed(self) -> None:
        path = self._selected_installed()
        if not path:
            return
        answer = QtWidgets.QMessageBox.question(
            self, "Remove model", f"Delete {path} from disk?"
        )
        if answer == QtWidgets.QMessageBox.StandardButton.Yes:
            self.controller.remove_installed(Path(path).name)

    # -- settings ----------------------------------------------------------------------

    @Slot(object)
    def _show_settings(self, settings: object) -> None:
        assert isinstance(settings, ModelSettings)
        remote = settings.backend != "llama.cpp"
        if remote:
            self.remote_radio.setChecked(True)
        elif settings.path is None:
            self.embedded_radio.setChecked(True)
        else:
            self.local_radio.setChecked(True)
        if settings.path is not None:
            self.local_path.setText(settings.path)
        self.remote_url.setText(settings.base_url or "")
        self.remote_model.setText(settings.remote_model or "")
        self.remote_key.setEditText(settings.remote_key_secret or "")
        self.remote_local.setChecked(settings.allow_local_remote)
        self.demo_note.setVisible(settings.path is None and not remote)
        self.n_threads.setValue(settings.n_threads or 0)
        # Offload, sinks, RoPE and threads are the local runtime's; a server has its own.
        for widget in (self.gpu_auto, self.n_sink, self.rope_combo, self.n_threads):
            widget.setEnabled(not remote)
        self.gpu_auto.setChecked(settings.n_gpu_layers is None)
        self.gpu_layers.setValue(settings.n_gpu_layers or 0)
        self.gpu_layers.setEnabled(settings.n_gpu_layers is not None)
        self.n_ctx.setValue(settings.n_ctx)
        self.n_sink.setValue(settings.n_sink)
        index = self.rope_combo.findData(settings.rope_scaling)
        self.rope_combo.setCurrentIndex(max(0, index))
        self.rope_factor.setValue(settings.rope_factor)
        self._rope_changed()
        if remote:
            self.gpu_layers.setEnabled(False)
            self.rope_factor.setEnabled(False)

    @Slot()
    def _rope_changed(self) -> None:
        self.rope_factor.setEnabled(self.rope_combo.currentData() != "none")

    @Slot()
    def use_selected(self) -> None:
        """Use the embedded model or the local file, whichever is selected."""
        self.banner.clear()
        if self.embedded_radio.isChecked():
            self.controller.use_embedded()
        elif self.remote_radio.isChecked():
            self.controller.use_remote(
                self.remote_url.text(), self.remote_model.text(), self.remote_key.currentText(),
                allow_local=self.remote_local.isChecked(),
            )
        else:
            self.controller.use_local_file(self.local_path.text())

    @Slot()
    def _pick_file(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(
            self, "Choose a GGUF model", self.local_path.text(), "GGUF models (*.gguf)"
        )
        if path:
            self.local_path.setText(path)
            self.local_radio.setChecked(True)

    @Slot()
    def apply_runtime(self) -> None:
        """Save the runtime options shown."""
        self.banner.clear()
        self.controller.apply_runtime(
            n_ctx=self.n_ctx.value(),
            n_gpu_layers=None if self.gpu_auto.isChecked() else self.gpu_layers.value(),
            n_sink=self.n_sink.value(),
            rope_scaling=str(self.rope_combo.currentData()),
            rope_factor=self.rope_factor.value(),
            n_threads=self.n_threads.value() or None,
        )

    @Slot(str, str)
    def _on_described(self, name: str, detail: str) -> None:
        self.model_name.setText(name)
        self.model_detail.setText(detail)

    @Slot(bool, str)
    def _on_gpu(self, supported: bool, detail: str) -> None:
        prefix = "GPU offload: available" if supported else "GPU offload: off"
        self.gpu_label.setText(f"{prefix} — {detail}")

    # -- downloads ---------------------------------------------------------------------

    @Slot()
    def _download(self) -> None:
        self.banner.clear()
        self.controller.start_download(
            self.repo_edit.text(), self.file_edit.text(), self.sha_edit.text()
        )

    def _set_downloading(self, downloading: bool) -> None:
        self.download_button.setEnabled(not downloading)
        self.cancel_download_button.setEnabled(downloading)
        for w in (self.repo_edit, self.file_edit, self.sha_edit):
            w.setReadOnly(downloading)

    @Slot(str)
    def _on_download_started(self, what: str) -> None:
        self._set_downloading(True)
        self.progress.setRange(0, 0)  # busy until the first report gives a size
        self.speed_label.setText(f"Connecting for {what}…")

    @Slot(object)
    def _on_download_progress(self, report: object) -> None:
        assert isinstance(report, DownloadProgress)
        if report.percent is None:
            self.progress.setRange(0, 0)
        else:
            self.progress.setFormat("%p%")
            self.progress.setRange(0, 100)
            self.progress.setValue(report.percent)
        total = f" of {_human_bytes(report.total)}" if report.total else ""
        self.speed_label.setText(
            f"{_human_bytes(report.done)}{total} · {_human_bytes(report.bytes_per_second)}/s"
        )

    @Slot(str)
    def _on_download_finished(self, path: str) -> None:
        self._set_downloading(False)
        self.progress.setRange(0, 100)
        self.progress.setValue(100)
        self.speed_label.setText(f"Downloaded and verified: {path}")
        self.banner.show_message(f"Model downloaded and selected: {path}", "info")

    @Slot(str)
    def _on_download_stopped_info(self, message: str) -> None:
        self._set_downloading(False)
        self.progress.setRange(0, 100)
        self.speed_label.setText(message)

    @Slot(str)
    def _on_download_failed(self, message: str) -> None:
        self._set_downloading(False)
        self.progress.setRange(0, 100)
        self.speed_label.setText("")
        self.banner.show_message(message, "error")

    # -- live --------------------------------------------------------------------------

    @Slot(object)
    def _on_stats(self, stats: object) -> None:
        if not isinstance(stats, Mapping):
            return
        tps = stats.get("tokens_per_second")
        if isinstance(tps, int | float):
            self.tps_label.setText(f"{tps:.1f} tok/s")
        ttft = stats.get("time_to_first_token_s")
        if isinstance(ttft, int | float):
            self.ttft_label.setText(f"time to first token: {ttft * 1000:.0f} ms")

    @Slot(object)
    def _on_context(self, state: object) -> None:
        assert isinstance(state, GaugeState)
        self.gauge.set_state(state)
        self.gauge_text.setText(state.summary())

    def sizeHint(self) -> QtCore.QSize:
        """A comfortable default size."""
        return QtCore.QSize(1000, 650)
